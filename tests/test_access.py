"""API keys, roles, list scoping, the loopback bootstrap and TLS, against a real server.

Expected permissions are written out here, not read from server/auth.py, so a
wrong table there fails these tests.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import ipaddress
import itertools
import json
import logging
import os
import queue
import random
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from lookalike.client import (
    FailedPrecondition,
    InvalidArgument,
    LookalikeClient,
    LookalikeError,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.lookalike_pb import lookalike_pb2_grpc as pb_grpc
from lookalike.server.auth import METHOD_ACTIONS, ROLE_ACTIONS
from tests.conftest import ServerHandle, start_server
from tests.processes import LOOKALIKE

_seeds = itertools.count(1000)


def picture(seed: int | None = None) -> bytes:
    """A small PNG of seeded noise: any two seeds give different entries, and fingerprinting is quick."""
    rng = random.Random(next(_seeds) if seed is None else seed)
    image = Image.frombytes("RGB", (48, 48), rng.randbytes(48 * 48 * 3)).resize((144, 144))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def fresh_name(prefix: str) -> str:
    return f"{prefix}-{next(_seeds)}"


def cli(server: ServerHandle, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """The real `lookalike` command against `server`, with no key unless `env` or `args` give one."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")}
    return subprocess.run(
        [str(LOOKALIKE), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, "LOOKALIKE_SERVER": server.address, **(env or {})},
    )


# Keys and roles -------------------------------------------------------------------


@dataclass
class Keyed:
    """A server whose lists are `a` and `b`, and a client per kind of key."""

    server: ServerHandle
    clients: dict[str, LookalikeClient]
    ids: dict[str, str]

    def __getitem__(self, role: str) -> LookalikeClient:
        return self.clients[role]


@pytest.fixture
def keyed(lookalike: ServerHandle) -> Iterator[Keyed]:
    boot = lookalike.client
    boot.create_list("a")
    boot.create_list("b")
    root = boot.create_key("admin", name="root")
    admin = LookalikeClient(lookalike.address, api_key=root.secret)
    made = {
        "writer": admin.create_key("writer", ["a"], name="uploader"),
        "checker": admin.create_key("checker", name="all-lists"),
        "checker-a": admin.create_key("checker", ["a"], name="only-a"),
    }
    clients = {"admin": admin} | {
        role: LookalikeClient(lookalike.address, api_key=key.secret) for role, key in made.items()
    }
    ids = {"admin": root.info.id} | {role: key.info.id for role, key in made.items()}
    yield Keyed(lookalike, clients, ids)
    for client in clients.values():
        client.close()


def _raise_item_error(results: Iterator[tuple[int, Any]]) -> None:
    for _, result in results:
        if isinstance(result, LookalikeError):
            raise result


def _delete_list(client: LookalikeClient, admin: LookalikeClient, target: str) -> None:
    name = fresh_name(target)
    admin.create_list(name)
    client.delete_list(name)


def _get_entry(client: LookalikeClient, admin: LookalikeClient, target: str) -> None:
    client.get_entry(target, admin.add(target, picture()).id)


def _remove_entry(client: LookalikeClient, admin: LookalikeClient, target: str) -> None:
    client.remove(target, admin.add(target, picture()).id)


def random_pdq() -> str:
    return random.Random(next(_seeds)).randbytes(32).hex()


def _revoke_key(client: LookalikeClient, admin: LookalikeClient, target: str) -> None:
    client.revoke_key(admin.create_key("checker", [target]).info.id)


def _submit_feedback(client: LookalikeClient, admin: LookalikeClient, target: str) -> None:
    image = picture()
    admin.add(target, image)
    client.submit_feedback(client.check(image, [target]).id, "confirmed")


Call = Callable[[LookalikeClient, LookalikeClient, str], object]
CALLS: dict[str, Call] = {
    "CreateList": lambda client, admin, target: client.create_list(fresh_name(target)),
    "GetList": lambda client, admin, target: client.get_list(target),
    "ListLists": lambda client, admin, target: client.lists(),
    "UpdateList": lambda client, admin, target: client.update_list(target, description="changed"),
    "DeleteList": _delete_list,
    "AddEntry": lambda client, admin, target: client.add(target, picture()),
    "AddEntries": lambda client, admin, target: _raise_item_error(
        client.add_many([pb.AddEntryRequest(list=target, image=pb.Image(data=picture()))])
    ),
    "GetEntry": _get_entry,
    "ListEntries": lambda client, admin, target: list(client.entries(target)),
    "RemoveEntry": _remove_entry,
    "Check": lambda client, admin, target: client.check(picture(), [target]),
    "CheckStream": lambda client, admin, target: _raise_item_error(
        client.check_many([LookalikeClient.check_request(picture(), [target])])
    ),
    "AddHash": lambda client, admin, target: client.add_hash(target, client.hash_entry(pdq=random_pdq())),
    "ImportEntries": lambda client, admin, target: _raise_item_error(
        client.import_stream(target, [client.hash_entry(pdq=random_pdq())])
    ),
    "ExportEntries": lambda client, admin, target: list(client.export_entries(target)),
    "CheckHashes": lambda client, admin, target: client.check_hashes([target], pdq=random_pdq()),
    "CreateKey": lambda client, admin, target: client.create_key("checker", [target]),
    "ListKeys": lambda client, admin, target: client.keys(),
    "RevokeKey": _revoke_key,
    "ListAudit": lambda client, admin, target: list(client.audit(target)),
    "GetCheck": lambda client, admin, target: client.get_check(client.check(picture(), [target]).id),
    "SubmitFeedback": _submit_feedback,
    "ListChecks": lambda client, admin, target: list(client.list_checks("review")),
    "GetCheckActivity": lambda client, admin, target: client.check_activity(target),
    "ListFeedback": lambda client, admin, target: list(client.feedback(target)),
    "Calibrate": lambda client, admin, target: client.calibrate(target),
    "ConfirmEntry": lambda client, admin, target: client.confirm_entry(target, admin.add(target, picture()).id),
    "GetWebhookSecret": lambda client, admin, target: client.webhook_secret(),
}
"""One real call per RPC, made by `client` on list `target` (`admin` prepares what it needs)."""

CHECKER_CALLS = {"Check", "CheckStream", "CheckHashes", "GetCheck", "SubmitFeedback", "ListChecks"}
WRITER_CALLS = {"GetList", "ListLists", "AddEntry", "AddEntries", "GetEntry", "ListEntries", "RemoveEntry"}
WRITER_CALLS |= {"GetCheckActivity"}
WRITER_CALLS |= CHECKER_CALLS
WRITER_CALLS |= {"AddHash", "ImportEntries", "ExportEntries"}
ALLOWED = {"admin": set(CALLS), "writer": WRITER_CALLS, "checker": CHECKER_CALLS}
ALLOWED["checker-a"] = ALLOWED["checker"]
LIMITED_TO = {"admin": None, "writer": {"a"}, "checker": None, "checker-a": {"a"}}
UNSCOPED_CALLS = {"ListLists", "ListChecks"}  # names no list: its answer is narrowed instead


def test_every_rpc_of_the_service_is_covered_here() -> None:
    methods = set(pb.DESCRIPTOR.services_by_name["Lookalike"].methods_by_name)
    assert set(CALLS) == methods


def test_the_table_of_what_each_rpc_needs_gives_each_role_the_calls_written_here() -> None:
    assert set(METHOD_ACTIONS) == set(CALLS)
    for role in ("admin", "writer", "checker"):
        assert {method for method, action in METHOD_ACTIONS.items() if action in ROLE_ACTIONS[role]} == ALLOWED[role]


@pytest.mark.parametrize("role", ["admin", "writer", "checker", "checker-a"])
def test_each_role_is_allowed_and_denied_each_kind_of_call(keyed: Keyed, role: str) -> None:
    wrong: list[str] = []
    for method, call in CALLS.items():
        for target in ("a", "b"):
            scope = LIMITED_TO[role]
            expected = method in ALLOWED[role] and (scope is None or target in scope or method in UNSCOPED_CALLS)
            try:
                call(keyed[role], keyed["admin"], target)
            except PermissionDenied as error:
                key_role = f"key {keyed.ids[role]!r} ({role.split('-')[0]})"
                if expected or key_role not in error.message:
                    wrong.append(f"{method} on {target}: {error}")
                elif method in ALLOWED[role] and f"list {target!r}" not in error.message:
                    wrong.append(f"{method} on {target}: the message does not name the list: {error}")
                continue
            if not expected:
                wrong.append(f"{method} on {target}: allowed, expected PERMISSION_DENIED")
    assert not wrong, "\n".join(wrong)


def test_denials_say_what_was_missing(keyed: Keyed) -> None:
    with pytest.raises(PermissionDenied) as role_error:
        keyed["writer"].delete_list("a")
    assert role_error.value.message == f"key {keyed.ids['writer']!r} (writer) may not delete lists"
    assert role_error.value.reason == "ROLE_NOT_ALLOWED"
    with pytest.raises(PermissionDenied) as list_error:
        keyed["checker-a"].check(picture(), ["a", "b"])
    assert (
        "may not check images on list 'b'" in list_error.value.message and "limited to: a" in list_error.value.message
    )
    assert list_error.value.reason == "LIST_NOT_ALLOWED"


def test_a_limited_key_naming_no_lists_checks_and_sees_only_its_lists(keyed: Keyed) -> None:
    image = picture()
    keyed["admin"].add("a", image)
    keyed["admin"].add("b", image)

    def lists_matched(client: LookalikeClient) -> set[str]:
        return {match.list for match in client.check(image).matches}

    assert lists_matched(keyed["admin"]) == {"a", "b"}
    assert lists_matched(keyed["checker"]) == {"a", "b"}
    assert lists_matched(keyed["checker-a"]) == {"a"}
    assert lists_matched(keyed["writer"]) == {"a"}
    ((_, streamed),) = keyed["checker-a"].check_many([LookalikeClient.check_request(image)])
    assert not isinstance(streamed, LookalikeError) and {m.list for m in streamed.matches} == {"a"}
    assert [info.name for info in keyed["writer"].lists()] == ["a"]
    assert [info.name for info in keyed["admin"].lists()] == ["a", "b"]


def test_calls_without_a_valid_key_are_refused_once_a_key_exists(keyed: Keyed) -> None:
    address = keyed.server.address
    with pytest.raises(Unauthenticated) as missing:
        keyed.server.client.lists()  # the fixture's own client sends no key
    assert "requires an API key" in missing.value.message and missing.value.reason == "API_KEY_MISSING"
    admin_id = keyed.ids["admin"]
    for wrong_key in (f"lk_{admin_id}_not-the-secret", "lk_k999_whatever", "some-other-token"):
        with LookalikeClient(address, api_key=wrong_key) as client, pytest.raises(Unauthenticated) as invalid:
            client.lists()
        assert invalid.value.message == "API key not recognised"
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.LookalikeStub(channel)
        with pytest.raises(grpc.RpcError) as malformed:
            stub.ListLists(pb.ListListsRequest(), metadata=[("authorization", "Basic dXNlcjpwYXNz")], timeout=10)
        assert malformed.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "Bearer" in (malformed.value.details() or "")
        # Health checks stay open for load balancers.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_a_revoked_key_is_refused_at_once_even_inside_an_open_stream(keyed: Keyed) -> None:
    admin = keyed["admin"]
    made = admin.create_key("writer", ["a"], name="doomed")
    writer = LookalikeClient(keyed.server.address, api_key=made.secret)
    outgoing: queue.Queue[pb.AddEntryRequest | None] = queue.Queue()

    def requests() -> Iterator[pb.AddEntryRequest]:
        while (request := outgoing.get(timeout=60)) is not None:
            yield request

    replies = writer.add_many(requests())
    outgoing.put(pb.AddEntryRequest(list="a", image=pb.Image(data=picture())))
    _, first = next(replies)
    assert not isinstance(first, LookalikeError)
    revoked = admin.revoke_key(made.info.id)
    assert revoked.revoked is not None
    outgoing.put(pb.AddEntryRequest(list="a", image=pb.Image(data=picture())))
    _, second = next(replies)
    assert isinstance(second, Unauthenticated) and "revoked" in second.message
    outgoing.put(None)
    assert list(replies) == []
    with pytest.raises(Unauthenticated, match="'.+' was revoked"):
        writer.check(picture(), ["a"])
    assert admin.get_list("a").entry_count == 1
    writer.close()


def test_key_rules_keep_the_server_manageable(lookalike: ServerHandle) -> None:
    boot = lookalike.client
    with pytest.raises(FailedPrecondition, match="first key must be an admin key"):
        boot.create_key("checker")
    first = boot.create_key("admin", name="first")
    admin = LookalikeClient(lookalike.address, api_key=first.secret)
    with pytest.raises(InvalidArgument, match="must name the lists"):
        admin.create_key("writer")
    with pytest.raises(InvalidArgument, match="admin key may use every list"):
        admin.create_key("admin", ["a"])
    with pytest.raises(InvalidArgument, match="role 'owner' is unknown"):
        admin.create_key("owner")
    with pytest.raises(InvalidArgument, match="list name"):
        admin.create_key("checker", ["Not A List"])
    with pytest.raises(FailedPrecondition, match="last admin key") as last:
        admin.revoke_key(first.info.id)
    assert last.value.reason == "LAST_ADMIN_KEY"
    with pytest.raises(NotFound):
        admin.revoke_key("k999")
    second = admin.create_key("admin", name="second")
    admin.revoke_key(first.info.id)  # another admin remains: allowed, and it takes effect at once
    with pytest.raises(Unauthenticated):
        admin.keys()
    with LookalikeClient(lookalike.address, api_key=second.secret) as other:
        listed = {info.id: info for info in other.keys()}
        assert listed[first.info.id].revoked is not None and listed[second.info.id].revoked is None
        assert listed[second.info.id].created_by == first.info.id and listed[first.info.id].created_by == ""
    admin.close()


def test_keys_are_stored_hashed(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    try:
        secrets = [server.client.create_key("admin").secret]
        with LookalikeClient(server.address, api_key=secrets[0]) as admin:
            secrets += [admin.create_key("checker", ["a"]).secret, admin.create_key("writer", ["b"]).secret]
    finally:
        server.stop()
    stored = b"".join(path.read_bytes() for path in (tmp_path / "data").iterdir() if path.is_file())
    for key in secrets:
        secret = key.split("_", 2)[2]
        assert len(secret) >= 40
        assert key.encode() not in stored and secret.encode() not in stored
        assert hashlib.sha256(secret.encode()).hexdigest().encode() in stored  # what is kept instead


def test_without_keys_the_server_listens_on_loopback_only(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = tmp_path / "data"
    with pytest.raises(FailedPrecondition, match="no API keys exist"):
        start_server(data, listen="0.0.0.0:0")
    completed = subprocess.run(
        [str(LOOKALIKE), "serve", "--data", str(data), "--listen", "0.0.0.0:0", "--http-listen", "off"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    assert "refusing to listen on 0.0.0.0:0: no API keys exist" in completed.stdout + completed.stderr

    with caplog.at_level(logging.WARNING, logger="lookalike"):
        server = start_server(data)
    assert any("no API keys exist" in record.getMessage() for record in caplog.records)
    key = server.client.create_key("admin").secret
    server.stop()

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="lookalike"):
        server = start_server(data, listen="0.0.0.0:0")  # keys exist now: any address is fine
    try:
        assert not any("no API keys exist" in record.getMessage() for record in caplog.records)
        assert any("without TLS" in record.getMessage() for record in caplog.records)
        with LookalikeClient(server.address, api_key=key) as admin:
            assert admin.lists() == []
        with pytest.raises(Unauthenticated):
            server.client.lists()
    finally:
        server.stop()


def test_cli_keys_create_ls_revoke(lookalike: ServerHandle) -> None:
    created = cli(lookalike, "keys", "create", "--role", "admin", "--name", "root", "--json")
    assert created.returncode == 0, created.stderr
    admin = json.loads(created.stdout)
    assert set(admin) == {"id", "name", "role", "lists", "key"}
    assert (admin["role"], admin["name"], admin["lists"]) == ("admin", "root", []) and admin["key"].startswith("lk_")

    refused = cli(lookalike, "keys", "ls")
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr
    as_admin = {"LOOKALIKE_API_KEY": admin["key"]}
    plain = cli(lookalike, "keys", "create", "--role", "writer", "--lists", "a,b", "--name", "uploader", env=as_admin)
    assert plain.returncode == 0, plain.stderr
    writer_key = plain.stdout.strip()  # the key alone on stdout, for scripts
    assert writer_key.startswith("lk_") and "\n" not in writer_key and "shown only now" in plain.stderr
    writer_id = writer_key.split("_")[1]

    listed = cli(lookalike, "keys", "ls", "--json", env=as_admin)
    keys = {record["id"]: record for record in map(json.loads, listed.stdout.splitlines())}
    assert keys[writer_id]["role"] == "writer" and keys[writer_id]["lists"] == ["a", "b"]
    assert keys[writer_id]["revoked"] is None and keys[writer_id]["created_by"] == admin["id"]
    assert all("key" not in record and "digest" not in record for record in keys.values())

    revoked = cli(lookalike, "keys", "revoke", writer_id, "--json", "--api-key", admin["key"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout) == {"id": writer_id, "revoked": True}
    listed = cli(lookalike, "keys", "ls", "--json", env=as_admin)
    states = {r["id"]: r["revoked"] for r in map(json.loads, listed.stdout.splitlines())}
    assert states[writer_id] is not None and states[admin["id"]] is None
    as_writer = cli(lookalike, "lists", "ls", "--api-key", writer_key)
    assert as_writer.returncode == 1 and "revoked" in as_writer.stderr
    last = cli(lookalike, "keys", "revoke", admin["id"], env=as_admin)
    assert last.returncode == 1 and "FAILED_PRECONDITION" in last.stderr and "last admin key" in last.stderr


# TLS ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """A test CA, a server certificate for 127.0.0.1/localhost, and client certificates."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_cert: Path  # a client certificate signed by another CA
    rogue_key: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, *, server: bool = False
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, signing_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        names = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(signing_key, hashes.SHA256()), key


def _write(folder: Path, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_path, key_path = folder / f"{name}.crt", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _certificate("Lookalike test CA", None)
    ca_path, _ = _write(folder, "ca", ca_cert, ca_key)
    issuer = (ca_cert.subject, ca_key)
    server_cert, server_key = _write(folder, "server", *_certificate("localhost", issuer, server=True))
    client_cert, client_key = _write(folder, "client", *_certificate("upload-service", issuer))
    other_ca_cert, other_ca_key = _certificate("Someone else's CA", None)
    rogue_cert, rogue_key = _write(folder, "rogue", *_certificate("intruder", (other_ca_cert.subject, other_ca_key)))
    return Pki(ca_path, server_cert, server_key, client_cert, client_key, rogue_cert, rogue_key)


def test_tls_round_trip_and_a_plain_client_is_refused(tmp_path: Path, pki: Pki) -> None:
    server = start_server(tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(pki.server_key))
    try:
        with LookalikeClient(server.address, tls_ca=pki.ca) as secure:
            secure.create_list("banned")
            secure.add("banned", picture(1))
            assert secure.check(picture(1), ["banned"]).decision == "reject"
        with LookalikeClient(server.address, timeout=10) as plain, pytest.raises(Unavailable):
            plain.lists()
        with LookalikeClient(server.address, timeout=10, tls=True) as untrusting, pytest.raises(Unavailable):
            untrusting.lists()  # the system's CAs do not know the test CA
        over_cli = cli(server, "lists", "ls", "--json", "--tls-ca", str(pki.ca))
        assert over_cli.returncode == 0, over_cli.stderr
        assert json.loads(over_cli.stdout)["name"] == "banned"
        by_env = cli(server, "lists", "ls", "--json", env={"LOOKALIKE_TLS_CA": str(pki.ca)})
        assert by_env.returncode == 0, by_env.stderr
    finally:
        server.stop()


def test_client_certificates_are_required_with_tls_client_ca(tmp_path: Path, pki: Pki) -> None:
    server = start_server(
        tmp_path / "data",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    try:
        with LookalikeClient(
            server.address, tls_ca=pki.ca, tls_cert=pki.client_cert, tls_key=pki.client_key
        ) as trusted:
            assert trusted.lists() == []
        with LookalikeClient(server.address, tls_ca=pki.ca, timeout=10) as anonymous, pytest.raises(Unavailable):
            anonymous.lists()
        with (
            LookalikeClient(
                server.address, tls_ca=pki.ca, tls_cert=pki.rogue_cert, tls_key=pki.rogue_key, timeout=10
            ) as rogue,
            pytest.raises(Unavailable),
        ):
            rogue.lists()
        env = {"LOOKALIKE_TLS_CA": str(pki.ca), "LOOKALIKE_CLIENT_CERT": str(pki.client_cert)}
        over_cli = cli(server, "lists", "ls", "--tls-key", str(pki.client_key), env=env)
        assert over_cli.returncode == 0, over_cli.stderr
    finally:
        server.stop()


def test_the_cli_says_which_side_speaks_tls(lookalike: ServerHandle, tmp_path: Path, pki: Pki) -> None:
    server = start_server(
        tmp_path / "tls",
        tls_cert=str(pki.server_cert),
        tls_key=str(pki.server_key),
        tls_client_ca=str(pki.ca),
    )
    try:
        plain = cli(server, "lists", "ls")
        assert plain.returncode == 1
        assert f"hint: the server at {server.address} speaks TLS: pass --tls-ca" in plain.stderr
        untrusting = cli(server, "lists", "ls", "--tls")
        assert untrusting.returncode == 1
        assert "hint: the server's certificate is not signed by a CA you trust: pass --tls-ca" in untrusting.stderr
        anonymous = cli(server, "lists", "ls", "--tls-ca", str(pki.ca))
        assert anonymous.returncode == 1 and "it may want a client certificate it trusts (--tls-cert, --tls-key)" in (
            anonymous.stderr
        )
    finally:
        server.stop()
    secure = cli(lookalike, "lists", "ls", "--json", "--tls-ca", str(pki.ca))
    assert secure.returncode == 1 and "does not speak TLS: leave out --tls" in json.loads(secure.stdout)["hint"]
    assert "does not speak TLS" in secure.stderr


def test_bad_tls_settings_stop_the_start_with_a_clear_message(tmp_path: Path, pki: Pki) -> None:
    with pytest.raises(FailedPrecondition, match="needs both --tls-cert and --tls-key"):
        start_server(tmp_path / "data", tls_cert=str(pki.server_cert))
    with pytest.raises(FailedPrecondition, match="--tls-key: cannot read"):
        start_server(tmp_path / "data", tls_cert=str(pki.server_cert), tls_key=str(tmp_path / "missing.key"))
    with pytest.raises(InvalidArgument, match="needs both --tls-cert and --tls-key"):
        LookalikeClient("127.0.0.1:1", tls_cert=pki.client_cert)
