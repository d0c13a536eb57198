"""Module boundaries the design depends on, checked rather than hoped for."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("faiss", "onnxruntime", "lmdb", "PIL", "numpy")


def test_the_thin_client_imports_nothing_heavy() -> None:
    code = (
        "import sys, lookalike.client, lookalike.client.cli;"
        f"loaded = [m for m in {HEAVY!r} if m in sys.modules];print(','.join(loaded))"
    )
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert completed.stdout.strip() == ""


def test_the_index_package_knows_nothing_of_grpc_storage_or_images() -> None:
    forbidden = {"grpc", "lmdb", "PIL", "server", "client", "google"}
    for path in (REPO / "index").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                parts = name.split(".")
                top = parts[1] if parts[0] == "lookalike" and len(parts) > 1 else parts[0]
                assert top not in forbidden, f"{path.name} imports {name}"


def test_generated_stubs_match_the_proto() -> None:
    completed = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_proto.py"), "--check"], capture_output=True, text=True, cwd=REPO
    )
    assert completed.returncode == 0, completed.stderr


def test_ruff_finds_nothing() -> None:
    completed = subprocess.run([sys.executable, "-m", "ruff", "check", "."], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stdout


def test_mypy_strict_finds_nothing() -> None:
    completed = subprocess.run([sys.executable, "-m", "mypy"], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stdout


def test_everything_installs_under_the_lookalike_namespace(tmp_path: Path) -> None:
    """Two distributions, one import namespace: the thin client (`lookalike-client`, only
    `lookalike/client`) and the server (`lookalike`, `lookalike/server` and `lookalike/index`);
    no top-level `client`, `server` or `index` lands in a user's site-packages."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path)]
        + [str(REPO / "client"), str(REPO)],
        check=True,
        capture_output=True,
    )
    tops: dict[str, set[str]] = {}
    for wheel in tmp_path.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if ".dist-info/" not in name]
        tops[wheel.name.split("-")[0]] = {"/".join(name.split("/")[:2]) for name in names}
    assert tops == {
        "lookalike_client": {"lookalike/client"},
        "lookalike": {"lookalike/server", "lookalike/index"},
    }
