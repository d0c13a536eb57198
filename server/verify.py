"""`lookalike verify DATA_DIR [--json]`: the command around `lookalike.server.storage.verify`, which reads every
record of a data folder and reports each damaged one. It changes nothing. Exit status: 0 when every record
reads, 1 when any is damaged, 2 when the folder cannot be verified at all."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from lookalike.server.storage.verify import CannotVerify, verify


def main(argv: Sequence[str] | None = None) -> int:
    """`lookalike verify DATA_DIR [--json]`."""
    parser = argparse.ArgumentParser(
        prog="lookalike verify",
        description="Read every record of a Lookalike data folder and report the damaged ones; changes nothing.",
    )
    parser.add_argument("data", type=Path, metavar="DATA_DIR", help="the server's --data folder")
    parser.add_argument("--json", action="store_true", help="one JSON object per damaged record, then a summary")
    args = parser.parse_args(argv)
    try:
        report = verify(args.data)
    except CannotVerify as error:
        print(f"lookalike verify: {error}", file=sys.stderr)
        return 2
    for problem in report.problems:
        if args.json:
            print(json.dumps(asdict(problem)))
        else:
            print(f"{problem.database}\t{problem.key}\t{problem.list or '-'}\t{problem.problem}")
    summary = {"data": str(args.data), "checked": report.checked, "damaged": len(report.problems)}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{report.checked} records checked in {args.data}: {len(report.problems)} damaged")
    return 1 if report.problems else 0
