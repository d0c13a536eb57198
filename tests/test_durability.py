"""Acknowledged adds and removes survive SIGTERM and SIGKILL of a real `lookalike serve` process."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import distinct_photos, jpeg_bytes
from tests.processes import ServerProcess


def start(data: Path) -> ServerProcess:
    # No periodic snapshot: what a restart sees comes from the shutdown snapshot and the change log.
    return ServerProcess(data, "--snapshot-interval", "3600")


@pytest.fixture
def data(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "data"


def edit_of(path: Path) -> bytes:
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").resize((image.width * 2 // 3, image.height * 2 // 3))
    return jpeg_bytes(small, quality=60)


@pytest.mark.slow
def test_sigkill_loses_no_acknowledged_change_and_sigterm_snapshots(data: Path) -> None:
    photos = distinct_photos(8, seed=3)
    server = start(data)
    server.client.create_list("banned")
    kept = [server.client.add("banned", path).id for path in photos[:4]]
    assert server.stop() == 0
    assert "index snapshots written" in server.log.read_text()

    server = start(data)
    assert server.client.get_list("banned").entry_count == 4
    later = [server.client.add("banned", path).id for path in photos[4:]]
    server.client.remove("banned", kept[0])
    server.client.remove("banned", later[0])
    server.kill()  # no snapshot: the restart must replay the change log

    server = start(data)
    try:
        assert server.client.get_list("banned").entry_count == 6
        ids = kept + later
        for position, path in enumerate(photos):
            result = server.client.check(edit_of(path), ["banned"])
            if position in (0, 4):
                assert result.decision == "accept", (path.name, result.matches[:1])
            else:
                assert result.decision in ("reject", "review"), (path.name, result.matches[:1])
                assert result.matches[0].id == ids[position]
    finally:
        assert server.stop() == 0
