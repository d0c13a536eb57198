"""The thin client's promises: eager imports, webhook checks, and the dependencies it declares."""

from __future__ import annotations

import ast
import re
import sys
import time
import tomllib
from importlib.metadata import distribution, packages_distributions
from pathlib import Path

from lookalike.client import ImportSummary, LookalikeClient
from lookalike.client.webhooks import is_valid, sign, verify
from tests.conftest import ServerHandle

REPO = Path(__file__).resolve().parent.parent


def test_import_entries_imports_at_once_and_sums_up(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("shared")
    entries = [client.hash_entry(pdq=f"{n + 1:064x}") for n in range(5)]
    bad = client.hash_entry(pdq="not hex")
    summary = client.import_entries("shared", [*entries[:3], bad, *entries], batch=2)  # nothing iterated
    assert isinstance(summary, ImportSummary)
    assert (summary.list, summary.added, summary.duplicates, summary.failed) == ("shared", 5, 3, 1)
    ((position, error),) = summary.errors
    assert position == 3 and error.reason == "PDQ_INVALID"
    assert client.get_list("shared").entry_count == 5
    streamed = client.import_stream("shared", entries[:2])  # the streaming form sends when iterated
    assert client.get_list("shared").entry_count == 5
    assert [result.duplicate for _, result in streamed] == [True, True]  # type: ignore[union-attr]


def test_webhook_signatures_checked_as_yes_or_no() -> None:
    now = time.time()
    body = b'{"id": "hooked"}'
    signature = sign("secret", int(now), body)
    assert is_valid("secret", int(now), body, signature, now=now) is True
    assert verify("secret", int(now), body, signature, now=now) is None
    assert is_valid("another secret", int(now), body, signature, now=now) is False
    assert is_valid("secret", int(now), body + b" ", signature, now=now) is False
    assert is_valid("secret", int(now), body, signature, now=now + 3600) is False  # a replay
    assert is_valid("secret", "yesterday", body, signature, now=now) is False


def _distribution_of(module: str) -> str | None:
    """The installed distribution that holds `module` (None for the standard library and our own code:
    `lookalike serve` imports the server, when it is installed)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top == "lookalike":
        return None
    path = module.replace(".", "/")
    for name in packages_distributions().get(top, []):
        files = distribution(name).files or []
        if any(str(f).startswith(f"{path}/") or str(f) == f"{path}.py" for f in files):
            return _canonical(name)
    raise AssertionError(f"no installed distribution holds {module}")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_the_base_dependencies_are_what_the_thin_client_imports() -> None:
    imported: set[str] = set()
    for path in (REPO / "client").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module)
    needed = {name for module in imported if (name := _distribution_of(module))}
    project = tomllib.loads((REPO / "client" / "pyproject.toml").read_text())["project"]
    declared = {_canonical(re.split(r"[<>=!~\[; ]", requirement)[0]) for requirement in project["dependencies"]}
    assert needed == declared


def test_the_licence_file_matches_the_declared_licence() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    text = (REPO / "LICENSE").read_text()
    assert project["license"] == "MIT" and text.startswith("MIT License")
    assert "Copyright (c) 2026 Lookalike contributors" in text


def test_a_client_made_for_tls_says_so() -> None:
    assert LookalikeClient("127.0.0.1:1", tls=True).tls and not LookalikeClient("127.0.0.1:1", tls=False).tls
