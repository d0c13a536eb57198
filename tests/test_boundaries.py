"""Module boundaries the design depends on, checked rather than hoped for."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from google.rpc import code_pb2

from lookalike.client.errors import ERRORS_BY_CODE
from lookalike.server.api import GRPC_CODES

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


def _contracts() -> dict[str, dict[str, list[str]]]:
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract for contract in settings["contracts"]}


def test_import_contracts_hold() -> None:
    """Operations and all they use import no gRPC, protobuf or HTTP server; the index imports nothing of
    the server or client; the thin client nothing of the server (pyproject.toml [tool.importlinter])."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    completed = subprocess.run([str(lint_imports)], capture_output=True, text=True, cwd=REPO)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "0 broken" in completed.stdout


def test_every_server_module_is_core_or_transport() -> None:
    """A new module must be named in the core contract, or as a transport it forbids the core: none goes unchecked."""
    core = _contracts()["core"]
    camps = set(core["source_modules"]) | set(core["forbidden_modules"])
    modules = {f"lookalike.server.{path.stem}" for path in (REPO / "server").glob("*.py") if path.stem != "__init__"}
    modules |= {f"lookalike.server.{path.parent.name}" for path in (REPO / "server").glob("*/__init__.py")}
    assert sorted(modules - camps) == []


def test_every_server_module_but_storage_is_forbidden_lmdb() -> None:
    """The storage contract names every module outside `lookalike.server.storage`, so a new one cannot open
    LMDB unnoticed."""
    sources = set(_contracts()["storage"]["source_modules"])
    modules = {f"lookalike.server.{path.stem}" for path in (REPO / "server").glob("*.py") if path.stem != "__init__"}
    modules |= {f"lookalike.server.{path.parent.name}" for path in (REPO / "server").glob("*/__init__.py")}
    assert sorted(modules - {"lookalike.server.storage"} - sources) == []
    assert {"lookalike.client", "lookalike.index"} <= sources


def test_only_the_storage_package_opens_databases() -> None:
    """`open_db` appears in the storage package alone (its environment, and `lookalike verify`'s reads)."""
    callers = {
        path.relative_to(REPO).as_posix()
        for folder in ("server", "index", "client")
        for path in (REPO / folder).rglob("*.py")
        if ".open_db(" in path.read_text()
    }
    assert callers == {"server/storage/environment.py", "server/storage/verify.py"}


def test_every_domain_error_has_its_grpc_status() -> None:
    """One table maps domain errors to gRPC codes (a second transport keeps its own beside it)."""
    assert set(GRPC_CODES) == set(ERRORS_BY_CODE.values())
    assert {error.code: code_pb2.Code.Name(code) for error, code in GRPC_CODES.items()} == {
        error.code: error.code for error in GRPC_CODES
    }


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
    files: set[str] = set()
    for wheel in tmp_path.glob("*.whl"):
        with zipfile.ZipFile(wheel) as archive:
            names = [name for name in archive.namelist() if ".dist-info/" not in name]
        tops[wheel.name.split("-")[0]] = {"/".join(name.split("/")[:2]) for name in names}
        files.update(names)
    assert tops == {
        "lookalike_client": {"lookalike/client"},
        "lookalike": {"lookalike/server", "lookalike/index"},
    }
    dashboard = {f"lookalike/server/http/{name}" for name in ("templates/base.html", "static/dashboard.js")}
    assert dashboard <= files  # the dashboard's files install with the server
