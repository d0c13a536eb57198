"""The LMDB environment of one data folder: opened once, by one server, with every database the schema names.

It owns what every store module needs: the folder checks and lock, the handles of the databases, write
transactions that turn a full map or disk into STORAGE_FULL (logged once when the disk starts refusing and
once when it takes writes again), format upgrades, and paging through time-keyed logs.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import lmdb

from lookalike.client.errors import FailedPrecondition, InvalidArgument
from lookalike.server.storage import schema
from lookalike.server.storage.errors import StorageFull, corrupt

log = logging.getLogger(__name__)

type Transaction = lmdb.Transaction
"""What store modules pass between their calls to make several writes in one transaction."""
type Database = lmdb._Database

ADD_RESERVE_SHARE = 0.01
ADD_RESERVE_MIN_BYTES = 128 * 1024
"""Adds stop this far short of a full map (the larger of the two): a removal copies pages before it
frees any, so a map filled to the last page could not be emptied without a restart."""

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
"""What LMDB reports when the disk will not take a write: no space, a quota, a file size limit (RLIMIT_FSIZE,
or the file system's largest file), and EIO, which LMDB also reports for a write cut short by a filling disk."""


class OnList(Protocol):
    """A record that names the list it is about ("" for none), as paged by `Environment.page`."""

    @property
    def list(self) -> str: ...


class Environment:
    """One data folder's LMDB environment, its lock, and a handle on every database in `schema.DATABASES`."""

    def __init__(self, path: Path, map_size: int) -> None:
        _prepare_folder(path)
        self.path = path
        # One server per data folder: a second would keep its own indexes and miss the first's writes.
        self._lock_file = (path / schema.LOCK_FILE).open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data folder {path} is in use by another Lookalike server; stop it or use another --data",
                "DATA_FOLDER_IN_USE",
            ) from None
        try:
            self.env = lmdb.open(
                str(path), map_size=map_size, max_dbs=schema.MAX_DATABASES, max_readers=512, subdir=True
            )
        except lmdb.Error as error:
            self._lock_file.close()
            raise FailedPrecondition(
                f"data folder {path} cannot be opened: {error}", "DATA_FOLDER_UNREADABLE"
            ) from None
        self._disk = _DiskFullState(path / schema.DATA_FILE)
        try:
            with _WriteGuard(self._disk):  # a new folder's databases are made here: the disk may refuse them
                self._dbs = {name: self.env.open_db(name) for name in schema.DATABASES}
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.env.close()
        self._lock_file.close()

    def db(self, name: bytes) -> Database:
        """The handle of a database the schema names."""
        return self._dbs[name]

    def read(self) -> lmdb.Transaction[bytes]:
        """A read transaction (use it with `with`): one consistent moment, kept short."""
        return self.env.begin()

    def read_buffers(self) -> lmdb.Transaction[memoryview]:
        """A read transaction whose values are views into the map, valid only until it ends."""
        return self.env.begin(buffers=True)

    @contextmanager
    def transaction(self, grows: bool = False) -> Iterator[Transaction]:
        """A write transaction whose full map or disk becomes StorageFull (and is rolled back).
        One that `grows` the data is refused already within the reserve kept for removals."""
        with _WriteGuard(self._disk), self.env.begin(write=True) as txn:
            if grows:
                self.ensure_room_to_grow(txn)
            yield txn

    def ensure_room_to_grow(self, txn: Transaction) -> None:
        """RESOURCE_EXHAUSTED once the map is within its reserve of full (see ADD_RESERVE_SHARE): the
        file has grown into the reserve, and its pages in use do not leave twice the reserve free
        (pages freed by removals are reused, so a folder emptied by removals takes adds again)."""
        info, page = self.env.info(), self.env.stat()["psize"]
        map_size = info["map_size"]
        reserve = max(ADD_RESERVE_MIN_BYTES, ADD_RESERVE_SHARE * map_size)
        if map_size - (info["last_pgno"] + 1) * page >= reserve:
            return
        in_use = sum(
            stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
            for stat in [txn.stat(), *(txn.stat(db) for db in self._dbs.values())]
        )
        if map_size - in_use * page < 2 * reserve:
            raise StorageFull(
                "the data folder's LMDB map is nearly full (a reserve is kept so that removals still work); "
                "restart the server with a larger --map-size"
            )

    def upgrade(self, version: int, step: Callable[[Transaction], None]) -> bool:
        """Bring a folder of an older format to `version`: `step` rewrites what changed, in the transaction
        that records the new version, so a crash midway leaves the old format whole. True when it ran."""
        meta = self.db(schema.DB_META)
        with self.transaction() as txn:
            if int(txn.get(schema.KEY_FORMAT_VERSION, default=b"0", db=meta)) >= version:
                return False
            step(txn)
            txn.put(schema.KEY_FORMAT_VERSION, str(version).encode(), db=meta)
        return True

    def open_old(self, txn: Transaction, name: bytes) -> Database | None:
        """A database an older format kept (for its upgrade), None when this folder never had it."""
        try:
            return self.env.open_db(name, txn=txn, create=False)
        except lmdb.NotFoundError:
            return None

    def meta_value(self, key: bytes, make: Callable[[], bytes]) -> bytes:
        """A value in the meta database, made (and stored) by `make` the first time it is asked for."""
        meta = self.db(schema.DB_META)
        with self.read() as txn:
            found = txn.get(key, db=meta)
        if found is not None:
            return bytes(found)
        with self.transaction() as txn:
            raced = txn.get(key, db=meta)
            if raced is not None:
                return bytes(raced)
            made = make()
            txn.put(key, made, db=meta)
            return made

    def page[R: OnList](
        self,
        name: bytes,
        key_size: int,
        decode: Callable[[bytes], R],
        list_name: str = "",
        since: float = 0.0,
        limit: int = 1000,
        page_token: str = "",
    ) -> tuple[list[R], str]:
        """Records of a database keyed by `schema.time_key` (keys of `key_size` bytes) oldest first, from
        `since` (or after `page_token`), on one list or all.

        Returns up to `limit` records and the token of the next page ("" at the end).
        """
        if page_token:
            try:
                last = bytes.fromhex(page_token)
            except ValueError:
                last = b""
            if len(last) != key_size:
                raise InvalidArgument(
                    f"page token {page_token[:40]!r} is not one this server gave", "PAGE_TOKEN_INVALID"
                )
            start = last + b"\0"  # just after the last record of the previous page
        else:
            start = schema.time_key(since)
        records: list[R] = []
        page_end = ""
        with self.read() as txn:
            cursor = txn.cursor(db=self.db(name))
            if not cursor.set_range(start):
                return records, ""
            for key, raw in cursor:
                try:
                    record = decode(bytes(raw))
                except (ValueError, TypeError) as error:  # CorruptRecord, or another module's decoder failing
                    raise corrupt(f"record {bytes(key).hex()} of database {name.decode()!r}", error) from None
                if list_name and record.list != list_name:
                    continue
                if len(records) == limit:
                    return records, page_end
                records.append(record)
                page_end = bytes(key).hex()
        return records, ""


def delete_prefix(cursor: lmdb.Cursor, prefix: bytes, up_to: int | None = None) -> None:
    """Delete the keys starting with `prefix` (and, given `up_to`, whose `seq_key` number is ≤ it)."""
    if not cursor.set_range(prefix):
        return
    while bytes(cursor.key()).startswith(prefix):
        if up_to is not None and schema.split_seq_key(cursor.key())[1] > up_to:
            return
        if not cursor.delete():
            return


def _prepare_folder(path: Path) -> None:
    """Create the data folder if need be and make sure this process may write in it, by writing (as root,
    permissions say little: a read-only mount or an immutable folder refuse writes all the same)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise FailedPrecondition(
            f"data folder {path} is a file, not a folder; pass a folder to --data", "DATA_FOLDER_NOT_A_FOLDER"
        ) from None
    except OSError as error:
        raise FailedPrecondition(
            f"data folder {path} cannot be created ({error.strerror}); create it or pass another --data",
            "DATA_FOLDER_NOT_WRITABLE",
        ) from None
    probe = path / schema.WRITE_PROBE_FILE.format(pid=os.getpid())  # two servers starting at once do not collide
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        probe.unlink()
        for name in (schema.LOCK_FILE, schema.DATA_FILE, schema.LMDB_LOCK_FILE):  # those there must be writable too
            if (path / name).exists():
                os.close(os.open(path / name, os.O_WRONLY))
    except OSError as error:
        raise FailedPrecondition(
            f"data folder {path} is not writable ({error.strerror}: {error.filename}); give the server a "
            "folder it may write in",
            "DATA_FOLDER_NOT_WRITABLE",
        ) from None


def _refused_by_disk(error: lmdb.Error) -> bool:
    """Whether LMDB failed because the disk would not take the write (py-lmdb names only ENOSPC by class)."""
    text = str(error)
    return isinstance(error, lmdb.DiskError) or any(os.strerror(number) in text for number in DISK_FULL_ERRNOS)


class _DiskFullState:
    """Whether the disk refuses the store's writes; logged once when it starts and once when it ends.

    It ends when a write succeeds after the data file grew past its size at the refusal: writes that fit
    in pages freed meanwhile succeed on a full disk too, and would otherwise log an end and a start again
    on every write that does not fit."""

    def __init__(self, data_file: Path) -> None:
        self._data_file = data_file
        self._size_when_refused: int | None = None
        self._lock = threading.Lock()

    def _size(self) -> int:
        try:
            return self._data_file.stat().st_size
        except OSError:
            return 0

    def refused(self, error: lmdb.Error) -> StorageFull:
        with self._lock:
            if self._size_when_refused is None:
                self._size_when_refused = self._size()
                log.error(
                    "data folder %s: the disk refused a write (%s): it is full or the file reached a size limit; "
                    "writes get RESOURCE_EXHAUSTED (STORAGE_FULL) until space is freed, reads go on",
                    self._data_file.parent,
                    error,
                )
        return StorageFull(
            "the disk under the data folder is full (or its file reached a size limit); free space there: "
            "writes resume without a restart"
        )

    def committed(self) -> None:
        if self._size_when_refused is None:
            return
        with self._lock:
            if self._size_when_refused is not None and self._size() > self._size_when_refused:
                self._size_when_refused = None
                log.warning("data folder %s: the disk takes writes again", self._data_file.parent)


class _WriteGuard:
    """Turns a full LMDB map or disk into StorageFull (the write is rolled back)."""

    def __init__(self, disk: _DiskFullState) -> None:
        self.disk = disk

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if error is None:
            self.disk.committed()
        elif isinstance(error, lmdb.MapFullError):
            raise StorageFull(
                "the data folder's LMDB map is full; restart the server with a larger --map-size"
            ) from None
        elif isinstance(error, lmdb.Error) and _refused_by_disk(error):
            raise self.disk.refused(error) from None
