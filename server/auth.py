"""Who may call what: API keys, roles, list scoping, the loopback bootstrap, and TLS files.

A key reads `lk_<id>_<secret>`. The id finds the key's record; the SHA-256 of the
secret (32 random bytes, so no slow hash is needed) is compared in constant time
with the stored digest. The key itself is never stored, so a copy of the data
folder grants nothing. Keys are few and change rarely: they are held in memory and
re-read after every change applied (`lookalike.server.writes`), so a revoked key is
refused from the next call or stream item on.

While no key exists every call is accepted without one. That is safe only because
the server then listens on loopback alone (`require_safe_listen`). The first key
must be an admin key and the last admin key cannot be revoked, so once keys exist
somebody can always manage them, and calls without a key are refused for good.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from lookalike.client.errors import FailedPrecondition, InvalidArgument, PermissionDenied, Unauthenticated
from lookalike.server.changes import KeyCreated
from lookalike.server.records import ADMIN, CHECKER, ROLES, WRITER, KeyRecord, validate_list_name
from lookalike.server.storage.store import Store

KEY_PREFIX = "lk"
SECRET_BYTES = 32
KEY_NAME_MAX = 64
AUTHORIZATION = "authorization"


class Action(StrEnum):
    """What a call does, worded to finish "key 'k3' (writer) may not ..."."""

    CREATE_LISTS = "create lists"
    READ_LISTS = "read lists"
    UPDATE_LISTS = "update lists"
    DELETE_LISTS = "delete lists"
    ADD_ENTRIES = "add entries"
    READ_ENTRIES = "read entries"
    REMOVE_ENTRIES = "remove entries"
    CHECK = "check images"
    MANAGE_KEYS = "manage keys"
    READ_AUDIT = "read the audit log"
    READ_FEEDBACK = "read feedback"
    CALIBRATE = "calibrate thresholds"
    CONFIRM_ENTRIES = "confirm flood-guarded entries"


METHOD_ACTIONS: dict[str, Action] = {
    "CreateList": Action.CREATE_LISTS,
    "GetList": Action.READ_LISTS,
    "ListLists": Action.READ_LISTS,
    "UpdateList": Action.UPDATE_LISTS,
    "DeleteList": Action.DELETE_LISTS,
    "AddEntry": Action.ADD_ENTRIES,
    "AddEntries": Action.ADD_ENTRIES,
    "GetEntry": Action.READ_ENTRIES,
    "ListEntries": Action.READ_ENTRIES,
    "RemoveEntry": Action.REMOVE_ENTRIES,
    "Check": Action.CHECK,
    "CheckStream": Action.CHECK,
    "AddHash": Action.ADD_ENTRIES,
    "ImportEntries": Action.ADD_ENTRIES,
    "ExportEntries": Action.READ_ENTRIES,
    "CheckHashes": Action.CHECK,
    "CreateKey": Action.MANAGE_KEYS,
    "ListKeys": Action.MANAGE_KEYS,
    "RevokeKey": Action.MANAGE_KEYS,
    "ListAudit": Action.READ_AUDIT,
    # A caller reads, and sends feedback on, its own checks only (admin: any).
    "GetCheck": Action.CHECK,
    "SubmitFeedback": Action.CHECK,
    "ListChecks": Action.CHECK,
    # One list's activity needs the right to read it; every check's (no list named), the audit log's.
    "GetCheckActivity": Action.READ_LISTS,
    "ListFeedback": Action.READ_FEEDBACK,
    "Calibrate": Action.CALIBRATE,
    "ConfirmEntry": Action.CONFIRM_ENTRIES,
    "GetWebhookSecret": Action.MANAGE_KEYS,
}
"""Every RPC of the Lookalike service and the action its operation requires (`server.operations` enforce
it); tests check that none is missing and that each role may make the calls this table gives it."""

ROLE_ACTIONS: dict[str, frozenset[Action]] = {
    ADMIN: frozenset(Action),
    # A writer may also read the lists and entries it changes, and check against them.
    WRITER: frozenset(
        {Action.READ_LISTS, Action.ADD_ENTRIES, Action.READ_ENTRIES, Action.REMOVE_ENTRIES, Action.CHECK}
    ),
    CHECKER: frozenset({Action.CHECK}),
}


@dataclass(frozen=True)
class Caller:
    """Who is calling: a key's id, role and lists (None: any list). The bootstrap caller has id ""."""

    key_id: str
    role: str
    lists: frozenset[str] | None = None

    def __str__(self) -> str:
        return f"key {self.key_id!r} ({self.role})" if self.key_id else "the keyless loopback caller"

    def may_use(self, list_name: str) -> bool:
        return self.lists is None or list_name in self.lists

    def require(self, action: Action, lists: Iterable[str] = ()) -> None:
        """PERMISSION_DENIED naming what is missing: the role's right, or one of the lists."""
        if action not in ROLE_ACTIONS[self.role]:
            raise PermissionDenied(f"{self} may not {action}", "ROLE_NOT_ALLOWED")
        for name in lists:
            if not self.may_use(name):
                allowed = ", ".join(sorted(self.lists or ()))
                raise PermissionDenied(
                    f"{self} may not {action} on list {name!r}; it is limited to: {allowed}", "LIST_NOT_ALLOWED"
                )


BOOTSTRAP = Caller("", ADMIN)
"""Any caller while no key exists (the server then listens on loopback only)."""


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


_NO_DIGEST = secret_digest("no such key")  # compared against when the id is unknown: same work either way


def parse_key(key: str) -> tuple[str, str] | None:
    """(id, secret) of `lk_<id>_<secret>`, or None when it is not shaped like one of our keys."""
    prefix, _, rest = key.partition("_")
    key_id, _, secret = rest.partition("_")
    if prefix != KEY_PREFIX or not key_id or not secret:
        return None
    return key_id, secret


class Access:
    """The keys of one store, checked on every call; creating and revoking go through here."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._keys: dict[str, KeyRecord] = {}
        self.reload()

    def reload(self) -> None:
        """Read the keys again: after every change to them (`WritePath.on_keys_changed`)."""
        self._keys = {record.id: record for record in self.store.keys()}  # replaced whole: never half-updated

    @property
    def open(self) -> bool:
        """True while no valid key exists: calls need no key (loopback bootstrap)."""
        return not any(not record.revoked for record in self._keys.values())

    def keys(self) -> list[KeyRecord]:
        return list(self._keys.values())  # re-read after every change

    # Checking calls --------------------------------------------------------

    def caller_for(self, authorization: str | None, peer_is_loopback: bool) -> Caller:
        """Who calls, from the `authorization` value it sent (`Bearer <key>`; None: it sent none) and
        whether it calls from this machine, as every transport reads them off its own request."""
        if authorization is None:
            if not self.open:
                raise Unauthenticated(
                    "this server requires an API key: send `authorization: Bearer <key>` as gRPC metadata or an "
                    "HTTP header (lookalike --api-key or LOOKALIKE_API_KEY)",
                    "API_KEY_MISSING",
                )
            if not peer_is_loopback:
                raise Unauthenticated("no API keys exist yet: calls without a key come only over loopback")
            return BOOTSTRAP
        scheme, _, key = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("authorization (metadata or header) must read `Bearer <key>`", "API_KEY_MALFORMED")
        parsed = parse_key(key.strip())
        record = self._keys.get(parsed[0]) if parsed else None
        offered = secret_digest(parsed[1] if parsed else key)
        matches = hmac.compare_digest(offered, record.digest if record else _NO_DIGEST)
        if record is None or not matches:
            raise Unauthenticated("API key not recognised", "API_KEY_INVALID")
        if record.revoked:
            raise Unauthenticated(f"API key {record.id!r} was revoked", "API_KEY_REVOKED")
        return Caller(record.id, record.role, frozenset(record.lists) if record.lists else None)

    def require(self, caller: Caller, action: Action, lists: Iterable[str] = ()) -> None:
        """`caller.require`, and that its key is still valid: a key revoked meanwhile (during a stream)
        stops at the next item. Every operation authorizes its caller through here."""
        if caller.key_id:
            record = self._keys.get(caller.key_id)
            if record is None or record.revoked:
                raise Unauthenticated(f"API key {caller.key_id!r} was revoked", "API_KEY_REVOKED")
        elif not self.open:
            raise Unauthenticated("an API key was created meanwhile: calls now need one", "API_KEY_MISSING")
        caller.require(action, lists)

    # Managing keys -----------------------------------------------------------

    def new_key(self, caller: Caller, role: str, lists: Sequence[str], name: str) -> tuple[KeyCreated, str]:
        """The change that creates a key, checked, and the key's secret (see `key_text`): the only time the
        secret exists outside the caller. Whether it may be created (the first key must be an admin key) is
        decided when the change is applied."""
        if role not in ROLES:
            raise InvalidArgument(f"role {role!r} is unknown; use one of {', '.join(ROLES)}", "ROLE_UNKNOWN")
        lists = list(dict.fromkeys(lists))
        for list_name in lists:
            validate_list_name(list_name)
        if role == ADMIN and lists:
            raise InvalidArgument("an admin key may use every list: create it without lists", "KEY_LISTS_NOT_ALLOWED")
        if role == WRITER and not lists:
            raise InvalidArgument("a writer key must name the lists it may change", "KEY_LISTS_REQUIRED")
        if len(name) > KEY_NAME_MAX or not name.isprintable():
            raise InvalidArgument(f"key name must be up to {KEY_NAME_MAX} printable characters", "KEY_NAME_INVALID")
        secret = secrets.token_urlsafe(SECRET_BYTES)
        digest = secret_digest(secret)
        change = KeyCreated(
            time=time.time(), actor=caller.key_id, name=name, role=role, lists=tuple(lists), digest=digest
        )
        return change, secret


def key_text(record: KeyRecord, secret: str) -> str:
    """The key a caller sends, `lk_<id>_<secret>`, once its record has its id."""
    return f"{KEY_PREFIX}_{record.id}_{secret}"


# Where the server may listen ------------------------------------------------------


def is_loopback_listen(listen: str) -> bool:
    """Whether HOST:PORT (or a unix: socket) can be reached from this machine only."""
    if listen.startswith("unix:"):
        return True
    host = listen.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    return _is_loopback_ip(host)


def is_loopback_peer(peer: str) -> bool:
    """Whether a gRPC peer string (`ipv4:127.0.0.1:5000`, `ipv6:%5B::1%5D:5000`, `unix:...`) is local."""
    kind, _, address = urllib.parse.unquote(peer).partition(":")
    if kind == "unix":
        return True
    return _is_loopback_ip(address.rpartition(":")[0].strip("[]"))


def is_loopback_host(host: str) -> bool:
    """Whether a peer's IP address (as an HTTP server reports it) is this machine's."""
    return _is_loopback_ip(host)


def _is_loopback_ip(host: str) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def require_safe_listen(listen: str, access: Access, flag: str = "--listen 127.0.0.1:50051") -> None:
    """Refuse to serve beyond loopback while calls need no key (`flag`: the loopback address to suggest)."""
    if access.open and not is_loopback_listen(listen):
        raise FailedPrecondition(
            f"refusing to listen on {listen}: no API keys exist, so anyone reaching it could change every list. "
            f"Start on loopback ({flag}), create an admin key with "
            "`lookalike keys create --role admin`, then restart with this address",
            "NO_KEYS_BEYOND_LOOPBACK",
        )


# TLS --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A server's TLS material, read from PEM files: its certificate chain and key, and the CA whose
    client certificates it requires (None: none required)."""

    cert: bytes
    key: bytes
    client_ca: bytes | None = None


def tls_files(cert: str, key: str, client_ca: str) -> TlsFiles | None:
    """The PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`, read and checked (None: no TLS)."""
    if not cert and not key and not client_ca:
        return None
    if not cert or not key:
        raise FailedPrecondition("TLS needs both --tls-cert and --tls-key", "TLS_INCOMPLETE")
    client_roots = _read_pem(client_ca, "--tls-client-ca") if client_ca else None
    key_pem = _read_pem(key, "--tls-key")
    return TlsFiles(_read_pem(cert, "--tls-cert"), key_pem, client_roots)


def _read_pem(path: str, flag: str) -> bytes:
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise FailedPrecondition(f"{flag}: cannot read {path}: {error.strerror}", "TLS_FILE_UNREADABLE") from None
    if b"-----BEGIN " not in data:
        raise FailedPrecondition(f"{flag}: {path} is not a PEM file", "TLS_FILE_INVALID")
    return data
