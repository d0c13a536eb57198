"""Storage faults: a full disk, a data folder the server may not write, corrupt records.

Each answers a clear status or one log line, never INTERNAL or a traceback. The full disk is a real
`lookalike serve` under a file size limit (RLIMIT_FSIZE, set and lifted from here with prlimit): the
kernel refuses its writes past the limit with EFBIG, on any machine and without mounting anything.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import resource
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import pytest

from lookalike.client import LookalikeClient, LookalikeError, ResourceExhausted
from lookalike.client.errors import DataLoss
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.server.changes import EntriesAdded, ListCreated
from lookalike.server.records import AddOutcome, NewEntry
from lookalike.server.storage.codec import entry_fields
from lookalike.server.storage.errors import CorruptRecord
from lookalike.server.storage.schema import DATA_FILE
from lookalike.server.storage.store import Store
from tests.conftest import distinct_photos, start_server
from tests.processes import LOOKALIKE, ServerProcess, end_leftovers
from tests.test_deferred import Receiver, receiver  # noqa: F401 - the fixture, shared

FULL_DISK_FLAGS = (
    "--workers",
    "0",
    "--allow-private-urls",
    # Every background writer runs while the disk is full: sweeps, flood-guard saves, snapshots, webhook retries.
    "--sweep-interval",
    "0.3",
    "--snapshot-interval",
    "0.3",
    "--snapshot-min-changes",
    "1",
    "--flood-min-matches",
    "3",
    "--flood-short-window",
    "60",
    "--flood-long-window",
    "6000",
    "--flood-factor",
    "5",
    "--webhook-backoff",
    "0.1",
    "--webhook-backoff-max",
    "0.3",
    "--webhook-max-attempts",
    "1000",
    "--url-timeout",  # the deferred check's image is held back until the disk is full
    "300",
)
FILL_HEADROOM = 2 << 20
"""Bytes the data file may grow by once the limit is set: a few import batches."""
LMDB_META_PAGES = 2
REFUSED_LINE = "the disk refused a write"
RECOVERED_LINE = "the disk takes writes again"


@pytest.fixture(autouse=True)
def no_server_left_behind() -> Iterator[None]:
    yield
    end_leftovers()


@dataclass
class HeldImage:
    """An image URL whose answer waits until `release` is set: a deferred check that fetches it runs then."""

    body: bytes = b""
    url: str = ""
    release: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def held_image() -> Iterator[HeldImage]:
    state = HeldImage()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.release.wait(300)
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(state.body)))
            self.end_headers()
            self.wfile.write(state.body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/photo.jpg"
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()


def hash_entries(rng: random.Random, count: int) -> list[pb.HashEntry]:
    return [LookalikeClient.hash_entry(pdq=rng.randbytes(32).hex(), md5=rng.randbytes(16).hex()) for _ in range(count)]


def limit_file_size(server: ServerProcess, limit: int) -> None:
    """The largest file offset the server may write (RLIM_INFINITY: none); Python ignores SIGXFSZ, so a
    write past it fails with EFBIG."""
    resource.prlimit(server.process.pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))


def refused_for_space(error: BaseException | None) -> bool:
    return isinstance(error, ResourceExhausted) and error.reason == "STORAGE_FULL"


def test_a_full_disk_refuses_writes_with_one_log_line_while_reads_go_on_and_writes_resume(
    tmp_path: Path,
    receiver: Receiver,  # noqa: F811 - the fixture
    held_image: HeldImage,
) -> None:
    rng = random.Random(16)
    data = tmp_path / "data"
    photo, other = (path.read_bytes() for path in distinct_photos(2, seed=16))
    server = ServerProcess(data, *FULL_DISK_FLAGS, relay_log=True)
    client = server.client
    client.create_list("banned")
    flooding = client.add("banned", photo).id
    acknowledged = 1
    client.check(other, ["banned"], request_id="before")
    receiver.always_fail = True  # a webhook in its retries when the disk fills
    client.check(other, ["banned"], request_id="hooked", callback_url=receiver.url)
    held_image.body = photo
    client.check(held_image.url, ["banned"], defer=True, request_id="deferred")  # runs when the image comes

    # Fill the disk through the API: import batches until one is refused.
    limit_file_size(server, (data / DATA_FILE).stat().st_size + FILL_HEADROOM)
    refused: list[LookalikeError] = []
    while not refused:
        batch = hash_entries(rng, 1000)
        results = [result for _, result in client.import_stream("banned", batch)]
        acknowledged += sum(not isinstance(result, LookalikeError) for result in results)
        refused = [result for result in results if isinstance(result, LookalikeError)]
    assert acknowledged > 1000 and all(refused_for_space(error) for error in refused), refused[:3]

    # Now no data page can be written, not even one freed meanwhile (LMDB's two meta pages, which start the
    # file, still can: a commit that wrote its pages before this and its meta page after must not fail, or
    # LMDB would stop the whole environment): every write path is refused with STORAGE_FULL or, in the
    # background, waits; reads and checks go on.
    limit_file_size(server, LMDB_META_PAGES * resource.getpagesize())
    decisions = [client.check(photo, ["banned"], request_id=f"full-{n}").decision for n in range(4)]
    assert decisions == ["reject", "reject", "review", "review"]  # the third trips the flood guard (in memory)
    attempts: list[Callable[[], object]] = [
        lambda: client.add_hash("banned", hash_entries(rng, 1)[0]),
        lambda: client.add("banned", other),
        lambda: client.create_list("more"),
        lambda: client.create_key("admin", name="ops"),
        lambda: client.submit_feedback("before", "missed_duplicate", entry_id=flooding, list_name="banned"),
        lambda: client.check(other, ["banned"], defer=True),
        lambda: client.confirm_entry("banned", flooding),
    ]
    for attempt in attempts:
        with pytest.raises(ResourceExhausted) as caught:
            attempt()
        assert caught.value.reason == "STORAGE_FULL" and "free space" in caught.value.message
    assert [guard.id for guard in client.get_list("banned").guarded] == [flooding]  # the refused confirm
    assert client.check_hashes(["banned"], pdq=batch[0].pdq).decision == "accept"  # the refused batch: not there
    assert client.get_check("full-0").result is not None  # held in memory meanwhile
    held_image.release.set()  # the deferred check runs, and cannot store its result: it stays pending
    assert client.get_list("banned").entry_count == acknowledged
    time.sleep(1.5)  # sweeps, snapshots, flood-guard saves, webhook retries and the deferred check meet it
    assert client.get_check("deferred").status == "pending"
    log = server.log.read_text()
    assert log.count(REFUSED_LINE) == 1 and "Traceback" not in log and "INTERNAL" not in log, log

    # Space comes back: writes work again without a restart, and what waited is written.
    limit_file_size(server, resource.RLIM_INFINITY)
    receiver.always_fail = False
    for _ in range(5):  # the line comes once the data file grows past its size when the disk refused
        results = [result for _, result in client.import_stream("banned", hash_entries(rng, 1000))]
        assert not any(isinstance(result, LookalikeError) for result in results), results[:3]
        acknowledged += len(results)
        if RECOVERED_LINE in server.log.read_text():
            break
    receiver.wait_for(1)
    assert client.wait_for_check("deferred", timeout=30).status == "done"
    assert client.add("banned", other).id
    acknowledged += 1
    assert server.stop() == 0
    log = server.log.read_text()
    assert log.count(REFUSED_LINE) == 1 and log.count(RECOVERED_LINE) == 1 and "Traceback" not in log, log

    # Nothing acknowledged was lost; checks answered while the disk was full were stored once it had room.
    server = ServerProcess(data, "--workers", "0")
    client = server.client
    assert sum(1 for _ in client.export_entries("banned")) == acknowledged == client.get_list("banned").entry_count
    assert client.get_check("full-3").result is not None and client.get_check("before").result is not None
    assert [guard.id for guard in client.get_list("banned").guarded] == [flooding]
    delivery = client.get_check("hooked").delivery
    assert delivery is not None and delivery.state == "delivered"
    assert server.stop() == 0


# A data folder the server may not write ----------------------------------------------------------------


def serve_until_it_exits(data: Path, *wrapper: str) -> subprocess.CompletedProcess[str]:
    """`lookalike serve` on `data` (run through `wrapper`, if any), which should refuse to start."""
    command = [*wrapper, str(LOOKALIKE), "serve", "--data", str(data), "--listen", "127.0.0.1:0", "--workers", "0"]
    command += ["--http-listen", "off"]  # 8080 may be anyone's
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def assert_one_line_refusal(completed: subprocess.CompletedProcess[str], *expected: str, alone: bool = True) -> None:
    """Exit status 1 and one line saying why (the only line, when `alone`), holding each of `expected`."""
    output = (completed.stdout + completed.stderr).strip()
    (refusal,) = [line for line in output.splitlines() if "cannot start" in line] or [output]
    assert completed.returncode == 1 and (not alone or output == refusal), output
    assert "Traceback" not in output and all(text in refusal for text in expected), output


@contextmanager
def read_only_bind_mount(folder: Path) -> Iterator[tuple[str, ...]]:
    """A command prefix that runs a program with `folder` bind-mounted read-only over itself, in a mount
    namespace of its own (inside a user namespace, so no privilege is needed where those are allowed)."""
    wrapper = (
        "unshare",
        "--user",
        "--map-root-user",
        "--mount",
        "sh",
        "-c",
        'mount --bind -o ro "$0" "$0" && exec "$@"',
    )
    probe = subprocess.run([*wrapper, str(folder), "touch", str(folder / "probe")], capture_output=True, text=True)
    if "Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only bind mount in a namespace here: {probe.stderr.strip()[:200]}")
    yield (*wrapper, str(folder))


@contextmanager
def immutable(*paths: Path) -> Iterator[tuple[str, ...]]:
    """`paths` made immutable (chattr +i): nobody may change them, root included."""
    if subprocess.run(["chattr", "+i", *map(str, paths)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not allowed here (needs CAP_LINUX_IMMUTABLE and a file system that has it)")
    try:
        yield ()
    finally:
        subprocess.run(["chattr", "-i", *map(str, paths)], check=True)


def immutable_folder(folder: Path) -> AbstractContextManager[tuple[str, ...]]:
    return immutable(folder, *folder.iterdir())


def immutable_data_files(folder: Path) -> AbstractContextManager[tuple[str, ...]]:
    """The folder takes new files; the data already in it may not be changed."""
    return immutable(*folder.iterdir())


@contextmanager
def folder_without_write_permission(folder: Path) -> Iterator[tuple[str, ...]]:
    if os.geteuid() == 0:
        pytest.skip("root writes whatever the permissions say")
    folder.chmod(0o555)
    try:
        yield ()
    finally:
        folder.chmod(0o755)


@pytest.mark.parametrize(
    "make_read_only", [read_only_bind_mount, immutable_folder, immutable_data_files, folder_without_write_permission]
)
def test_a_data_folder_the_server_may_not_write_ends_serve_with_one_line(
    tmp_path: Path, make_read_only: Callable[[Path], AbstractContextManager[tuple[str, ...]]]
) -> None:
    data = tmp_path / "data"
    Store(data, 1 << 20).close()  # a folder that holds data
    with make_read_only(data) as wrapper:
        completed = serve_until_it_exits(data, *wrapper)
    assert_one_line_refusal(completed, f"data folder {data} is not writable")


def test_a_data_folder_that_is_a_file_or_cannot_be_created_ends_serve_with_one_line(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    assert_one_line_refusal(serve_until_it_exits(a_file), f"data folder {a_file} is a file, not a folder")
    below_a_file = a_file / "data"
    assert_one_line_refusal(serve_until_it_exits(below_a_file), f"data folder {below_a_file} cannot be created")


# Corrupt records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Folder:
    """A data folder filled by a real server, now stopped: a picture entry, hash entries, a stored check."""

    path: Path
    photo: bytes
    photo_id: str
    hash_entries: list[pb.HashEntry]
    hash_ids: list[str]

    def seq(self, entry_id: str, list_name: str = "banned") -> int:
        store = Store(self.path, 1 << 30)
        try:
            return store.get_entry(list_name, entry_id).seq
        finally:
            store.close()

    def uid(self, list_name: str = "banned") -> int:
        store = Store(self.path, 1 << 30)
        try:
            return store.get_list(list_name).uid
        finally:
            store.close()


@pytest.fixture
def folder(tmp_path: Path) -> Folder:
    rng = random.Random(3)
    (photo,) = (path.read_bytes() for path in distinct_photos(1, seed=3))
    handle = start_server(tmp_path / "data")
    try:
        client = handle.client
        client.create_list("banned")
        client.create_list("other")
        photo_id = client.add("banned", photo).id
        entries = hash_entries(rng, 20)
        imported = [result for _, result in client.import_stream("banned", entries)]
        hash_ids = [result.id for result in imported if not isinstance(result, LookalikeError)]
        client.check(photo, ["banned"], request_id="stored")
    finally:
        handle.stop()  # writes the index snapshots
    return Folder(tmp_path / "data", photo, photo_id, entries, hash_ids)


def damage(data: Path, database: bytes, key: bytes, value: bytes) -> None:
    """Write `value` under `key` in a stopped server's folder, through LMDB itself, as a broken disk or a
    bug would leave it."""
    env = lmdb.open(str(data), max_dbs=64, subdir=True)
    try:
        db = env.open_db(database)
        with env.begin(write=True) as txn:
            txn.put(key, value, db=db)
    finally:
        env.close()


def seq_key(uid: int, seq: int) -> bytes:
    return struct.pack(">IQ", uid, seq)


def verify_json(data: Path) -> tuple[int, list[dict[str, Any]]]:
    completed = subprocess.run(
        [str(LOOKALIKE), "verify", str(data), "--json"], capture_output=True, text=True, timeout=300
    )
    assert "Traceback" not in completed.stderr, completed.stderr
    return completed.returncode, [json.loads(line) for line in completed.stdout.splitlines()]


def test_verify_finds_nothing_wrong_in_a_healthy_folder_changes_nothing_and_runs_beside_a_server(
    folder: Folder,
) -> None:
    before = {path.name: path.read_bytes() for path in folder.path.iterdir()}
    code, lines = verify_json(folder.path)
    assert code == 0 and len(lines) == 1, lines
    assert lines[0]["damaged"] == 0 and lines[0]["checked"] > 40
    assert {path.name: path.read_bytes() for path in folder.path.iterdir()} == before

    server = ServerProcess(folder.path, "--workers", "0")
    try:
        code, lines = verify_json(folder.path)  # as one more LMDB reader, in one read transaction
        assert code == 0 and lines[-1]["damaged"] == 0, lines
        assert server.client.check(folder.photo, ["banned"]).decision == "reject"
        assert server.client.add_hash("other", hash_entries(random.Random(4), 1)[0]).id  # writes go on
    finally:
        assert server.stop() == 0


@pytest.mark.parametrize("make_read_only", [read_only_bind_mount, immutable_folder])
def test_verify_reads_a_folder_it_may_not_write(
    folder: Folder, make_read_only: Callable[[Path], AbstractContextManager[tuple[str, ...]]]
) -> None:
    damage(folder.path, b"audit", b"\x00" * 16, b"[1, 2")
    with make_read_only(folder.path) as wrapper:
        command = [*wrapper, str(LOOKALIKE), "verify", str(folder.path)]
        completed = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 1 and completed.stderr == "", completed.stderr
    (problem, summary) = completed.stdout.splitlines()
    assert problem.startswith("audit\t" + "00" * 16 + "\t-\tnot JSON") and summary.endswith(": 1 damaged")


@pytest.mark.parametrize(
    ("database", "key", "value", "named"),
    [
        (b"lists", b"banned", b'{"uid": 1, "name": "banned", "descr', "the record of list 'banned'"),
        (b"lists", b"other", b'{"uid": "two"}', "the record of list 'other'"),
        (b"keys", b"k1", b'{"id": "k1", "name": "ops"}', "the record of API key 'k1'"),
        (b"meta", b"next_list_uid", b"\x00\x07", "the meta record 'next_list_uid'"),
        (b"meta", b"format_version", b"two", "the meta record 'format_version'"),
        (b"flood_guards", bytes(12), b'{"list": "banned"', f"flood guard record {bytes(12).hex()}"),
        (b"webhook_outbox_by_owner", b"\0hooked", b"[]", "the webhook delivery of check 'hooked'"),
    ],
)
def test_a_corrupt_record_read_at_start_up_stops_it_with_one_line_naming_it_and_verify_reports_it(
    folder: Folder, database: bytes, key: bytes, value: bytes, named: str
) -> None:
    damage(folder.path, database, key, value)
    completed = serve_until_it_exits(folder.path)
    # Lists, keys and meta are read before anything is logged; the others after a warning or two.
    alone = database in (b"lists", b"keys", b"meta")
    assert_one_line_refusal(completed, f"{named} is corrupt", f"run `lookalike verify {folder.path}`", alone=alone)
    code, lines = verify_json(folder.path)
    assert code == 1 and lines[-1]["damaged"] >= 1, lines
    text = key.hex() if database == b"flood_guards" else key.decode().replace("\0", "/")  # owner/id
    assert {"database": database.decode(), "key": text}.items() <= lines[0].items(), lines


def test_a_corrupt_entry_record_or_embedding_answers_data_loss_naming_it_while_the_rest_is_served(
    folder: Folder,
) -> None:
    uid = folder.uid()
    broken_seq, photo_seq = folder.seq(folder.hash_ids[4]), folder.seq(folder.photo_id)
    damage(folder.path, b"entries", seq_key(uid, broken_seq), b'{"id": "' + folder.hash_ids[4].encode())
    damage(folder.path, b"vectors", seq_key(uid, photo_seq), b"\x00" * 100)  # a truncated embedding
    damage(folder.path, b"audit", bytes(16), b'{"time": 1')

    server = ServerProcess(folder.path, "--workers", "0")  # the snapshot holds both: the start reads neither
    try:
        client = server.client
        assert client.check(folder.photo, ["banned"]).decision == "reject"
        assert client.check_hashes(["banned"], md5=folder.hash_entries[5].md5).decision == "reject"
        for read in (
            lambda: list(client.export_entries("banned")),
            lambda: client.get_entry("banned", folder.hash_ids[4]),
            lambda: client.check_hashes(["banned"], md5=folder.hash_entries[4].md5),
        ):
            with pytest.raises(DataLoss) as caught:
                read()
            assert caught.value.reason == "DATA_CORRUPT", caught.value
            assert f"entry seq {broken_seq} of list banned is corrupt (not JSON" in caught.value.message
            assert "run `lookalike verify DATA_DIR`" in caught.value.message
        assert client.get_entry("banned", folder.photo_id).id == folder.photo_id  # its record is whole
        with pytest.raises(DataLoss, match=f"entry seq {photo_seq} of list banned is corrupt .*100 bytes"):
            list(client.export_entries("banned", with_embeddings=True))
        with pytest.raises(DataLoss, match=f"record {'00' * 16} of database 'audit' is corrupt .not JSON"):
            list(client.audit())
    finally:
        assert server.stop() == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "INTERNAL" not in log, log

    code, lines = verify_json(folder.path)
    assert code == 1 and lines[-1]["damaged"] == 3, lines
    found = {(line["database"], line["key"], line["list"]) for line in lines[:-1]}
    assert found == {
        ("entries", f"{uid}:{broken_seq}", "banned"),
        ("vectors", f"{uid}:{photo_seq}", "banned"),
        ("audit", "00" * 16, ""),
    }


def test_a_corrupt_entry_in_the_change_log_to_replay_stops_start_up_with_one_line(folder: Folder) -> None:
    store = Store(folder.path, 1 << 30)  # an add after the last snapshot: the next start replays it
    try:
        new = NewEntry("late", pdq=b"\xab" * 32, pdq_quality=100)
        (added,) = store.commit(EntriesAdded(time=time.time(), list="banned", model="", entries=(new,))).result
        assert isinstance(added, AddOutcome)
        uid = store.get_list("banned").uid
    finally:
        store.close()
    misplaced = json.dumps(entry_fields(added.entry) | {"seq": 99999}).encode()
    damage(folder.path, b"entries", seq_key(uid, added.entry.seq), misplaced)
    completed = serve_until_it_exits(folder.path)
    expected = f"entry seq {added.entry.seq} of list banned is corrupt (it says seq 99999)"
    assert_one_line_refusal(completed, expected, f"run `lookalike verify {folder.path}`", alone=False)


def test_a_damaged_index_snapshot_is_rebuilt_from_the_entries_and_verify_reports_it(folder: Folder) -> None:
    uid = folder.uid()
    env = lmdb.open(str(folder.path), max_dbs=64, subdir=True)
    try:
        with env.begin() as txn:
            stored = bytearray(txn.get(struct.pack(">I", uid), db=env.open_db(b"snapshots", txn=txn)))
    finally:
        env.close()
    middle = len(stored) // 2
    stored[middle : middle + 8] = bytes(byte ^ 0xFF for byte in stored[middle : middle + 8])
    damage(folder.path, b"snapshots", struct.pack(">I", uid), bytes(stored))

    code, lines = verify_json(folder.path)
    assert code == 1 and lines[0]["database"] == "snapshots" and "checksum" in lines[0]["problem"], lines
    server = ServerProcess(folder.path, "--workers", "0")
    try:
        result = server.client.check(folder.photo, ["banned"])
        assert result.decision == "reject" and result.matches[0].id == folder.photo_id
        assert result.matches[0].score == 1.0
        assert sum(1 for _ in server.client.export_entries("banned")) == 21
    finally:
        assert server.stop() == 0  # and writes a good snapshot
    assert "list banned: snapshot unreadable (the snapshot does not match its checksum)" in server.log.read_text()
    assert verify_json(folder.path)[0] == 0


def test_a_snapshot_piece_that_does_not_match_its_checksum_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "data", 1 << 30)
    try:
        change = ListCreated(
            time=time.time(), name="big", description="", review_threshold=0.5, reject_threshold=0.8, model="sscd"
        )
        uid = store.commit(change).result.uid
        assert store.save_snapshot(uid, 0, b"blob", {0: b"piece zero", 1: b"piece one"}, {0, 1})
        assert [(n, bytes(data)) for n, data in store.snapshot_pieces(uid)] == [(0, b"piece zero"), (1, b"piece one")]
    finally:
        store.close()
    damage(tmp_path / "data", b"snapshot_pieces", struct.pack(">II", uid, 1), b"piece 0ne")
    store = Store(tmp_path / "data", 1 << 30)
    try:
        with pytest.raises(CorruptRecord, match="snapshot piece 1 does not match its checksum"):
            list(store.snapshot_pieces(uid))
    finally:
        store.close()
    code, lines = verify_json(tmp_path / "data")
    assert code == 1 and (lines[0]["database"], lines[0]["list"]) == ("snapshot_pieces", "big"), lines
