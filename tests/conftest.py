"""Shared fixtures: a real server on a free loopback port, real photos, real edits."""

from __future__ import annotations

import io
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from lookalike.client import LookalikeClient
from lookalike.server.app import RunningServer, create_server
from lookalike.server.config import ServerConfig
from lookalike.server.shared_state import NodeState

REPO = Path(__file__).resolve().parent.parent
CORPUS = Path(os.environ.get("LOOKALIKE_CORPUS", REPO.parent / "shared" / "corpus" / "dev"))
SCREENSHOTS = REPO / "tests" / "screenshots"
"""Where the browser tests save a screenshot of each dashboard page (ignored by git)."""
screenshots_taken = pytest.StashKey[list[Path]]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Say where this run's screenshots are, for a person to look at them."""
    taken = config.stash.get(screenshots_taken, [])
    if taken:
        terminalreporter.write_line(f"dashboard screenshots ({len(taken)} pages): {SCREENSHOTS}")


def corpus_photos() -> list[Path]:
    """The dev corpus, or a skip saying where it was looked for."""
    photos = sorted(CORPUS.glob("*.jpg")) if CORPUS.is_dir() else []
    if not photos:
        pytest.skip(f"photo corpus not found at {CORPUS} (set LOOKALIKE_CORPUS)")
    return photos


def near_duplicate_groups() -> list[set[str]]:
    """File names the corpus's NEAR_DUPLICATES.tsv (and benchmarks/same_scene.tsv, what it lacks) say show one
    picture or scene (never split them)."""
    groups: list[set[str]] = []
    for table in (CORPUS.parent / "NEAR_DUPLICATES.tsv", REPO / "benchmarks" / "same_scene.tsv"):
        if table.exists():
            for line in table.read_text().splitlines()[1:]:
                a, b = line.split("\t")[:2]
                groups.append({a, b})
    return groups


def distinct_photos(count: int, seed: int = 0, exclude: set[str] | None = None) -> list[Path]:
    """`count` seeded photos, no two of them near-duplicates of each other."""
    photos = corpus_photos()
    rng = random.Random(seed)
    rng.shuffle(photos)
    taken: list[Path] = []
    blocked = set(exclude or ())
    for photo in photos:
        if photo.name in blocked:
            continue
        taken.append(photo)
        for group in near_duplicate_groups():
            if photo.name in group:
                blocked |= group
        blocked.add(photo.name)
        if len(taken) == count:
            break
    return taken


def pasted_on_a_photo(photo: Path, background: Path) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """`photo` pasted at (300, 160) on `background` resized to 1200 × 800 (a listed picture inside another
    photo), and the box it covers."""
    with Image.open(background) as opened:
        canvas = opened.convert("RGB").resize((1200, 800))
    with Image.open(photo) as opened:
        pasted = ImageOps.contain(opened.convert("RGB"), (780, 520))
    canvas.paste(pasted, (300, 160))
    return canvas, (300, 160, 300 + pasted.width, 160 + pasted.height)


def jpeg_bytes(image: Image.Image, quality: int = 85) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


@dataclass
class ServerHandle:
    """A real server on loopback and a client for it; `restart()` keeps the data folder."""

    config: ServerConfig
    running: RunningServer
    client: LookalikeClient
    shared: NodeState | None = None
    """Cluster mode's shared node state (tests/test_shared_state.py); None: a single node."""

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        self.client.close()
        self.running.stop(grace=1)

    def restart(self) -> None:
        self.stop()
        self.running = create_server(self.config, shared=self.shared)
        self.client = LookalikeClient(self.address)


def start_server(data: Path, shared: NodeState | None = None, **overrides: object) -> ServerHandle:
    settings: dict[str, object] = {
        "listen": "127.0.0.1:0",
        "data": data,
        "map_size": 1 << 30,
        "allow_private_urls": True,
        "workers": 0,  # in-process: a worker pool costs seconds a start; tests/test_workers.py covers it
        # Tests check one picture many times over; tests/test_flood_guard.py turns the guard on with small windows.
        "flood_min_matches": 0,
        "http_listen": "off",  # tests of the HTTP API ask for it (127.0.0.1:0); 8080 may be anyone's
    }
    config = ServerConfig(**{**settings, **overrides})  # type: ignore[arg-type]
    running = create_server(config, shared=shared)
    return ServerHandle(config, running, LookalikeClient(f"127.0.0.1:{running.port}"), shared)


@pytest.fixture
def lookalike(tmp_path: Path) -> Iterator[ServerHandle]:
    handle = start_server(tmp_path / "data")
    yield handle
    handle.stop()
