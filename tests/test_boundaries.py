"""Module boundaries the design depends on, checked rather than hoped for."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("faiss", "onnxruntime", "lmdb", "PIL", "numpy")


def test_the_thin_client_imports_nothing_heavy() -> None:
    code = f"import sys, client, client.cli;loaded = [m for m in {HEAVY!r} if m in sys.modules];print(','.join(loaded))"
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
                assert name.split(".")[0] not in forbidden, f"{path.name} imports {name}"


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
