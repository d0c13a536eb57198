"""`lookalike`: the list administrator's command line, and the contract scripts rely on.

With --json, `add` and `check` print one JSON object per image on stdout; an image
that fails prints {"path", "error"}, the rest carry on, and the exit status is 1.
`import` prints {"line", "error"} per line it could not import (the rest are
imported) and a closing {"list", "added", "duplicates", "failed"}; `export` writes
the file to stdout (or --output) and its progress to stderr.
`add` and `check` end with a one-line summary on stderr (counts, failures, elapsed time).
An error that every image would meet alike (a list that does not exist, a key without the
right, an option the server refuses) is reported once and ends the command with status 1.
A command that fails as a whole prints {"error", "code", "reason"} with --json, plus "hint"
when there is advice (also on stderr): a server not reached, TLS on one side only.
`entries LIST --json` prints one entry per line, newest first.
`keys create` prints the new key alone on stdout (its only showing), so a script
can capture it; `audit --json` prints one change per line. `check --defer --json`
prints {"path", "id"} per image; `result ID --json` prints the stored check with its
`status` ("pending", "done" or "failed"). `verify DATA_DIR --json` (run on the server's
machine, like `serve`) prints {"database", "key", "list", "problem"} per damaged record and a
closing {"data", "checked", "damaged"}; it exits 1 when any record is damaged.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import ssl
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lookalike.client.errors import LookalikeError
from lookalike.client.hashfiles import (
    EXPORT_FORMATS,
    FORMATS,
    JSONL,
    PDQ_CSV,
    PDQ_HASHES,
    BadLine,
    detect_format,
    format_for,
    read_entries,
    write_jsonl,
    write_pdq_csv,
    write_pdq_hashes,
)
from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.stub import DEFAULT_SERVER, IMPORT_BATCH, LookalikeClient
from lookalike.client.types import (
    VERDICTS,
    AddResult,
    AuditRecord,
    Calibration,
    CheckRecord,
    CheckResult,
    Entry,
    Feedback,
    KeyInfo,
    ListInfo,
    ThresholdAdvice,
    View,
    image_message,
)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".avif", ".heic", ".heif", ".gif", ".bmp", ".tif", ".tiff", ".jfif"}
MODEL_CHOICES = ("sscd", "sscd-distilled")
OWNER_HELP = "the key id that made the check (admin, to reach another key's check; default: your own)"
STDIN = "-"
MAX_TOP_K = 1000
ENTRIES_PAGE_MAX = 1000
"""The server's bound on `top_k` (server/service.py; a test keeps the two equal)."""
REQUEST_WIDE_REASONS = frozenset(
    {
        "LIST_NOT_FOUND",
        "LIST_NAME_INVALID",
        "LIST_NOT_ALLOWED",
        "ROLE_NOT_ALLOWED",
        "TOP_K_OUT_OF_RANGE",
        "MIN_SCORE_OUT_OF_RANGE",
        "META_TOO_LARGE",
        "STORAGE_FULL",
    }
)
"""Per-image errors that say nothing about the image: every other image would get the same."""


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def expand_inputs(inputs: Sequence[str]) -> Iterator[str]:
    """URLs as given, files as given, folders recursed (image files, sorted, hidden skipped).

    A folder with no picture in it is yielded itself, so that it is reported rather than skipped
    in silence."""
    for item in inputs:
        path = Path(item)
        if _is_url(item) or not path.is_dir():
            yield item
            continue
        found = False
        for root, folders, files in os.walk(path):
            folders[:] = sorted(f for f in folders if not f.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES:
                    found = True
                    yield str(Path(root) / name)
        if not found:
            yield item


class NoPictures(OSError):
    """A folder given as input holds no picture files."""

    def __str__(self) -> str:
        return f"no pictures in this folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))}; hidden files skipped)"


def _image(item: str) -> pb.Image:
    """What to send for one input (`-`: the bytes on stdin); raises OSError for an unreadable file."""
    if item == STDIN:
        return pb.Image(data=sys.stdin.buffer.read())
    if _is_url(item):
        return pb.Image(url=item)
    if Path(item).is_dir():
        raise NoPictures()
    return image_message(Path(item))


def _one_stdin(inputs: Sequence[str]) -> None:
    """Refuse `-` twice (stdin holds one picture), or when stdin is a terminal (it would wait on a person)."""
    if list(inputs).count(STDIN) > 1:
        raise SystemExit(f"lookalike: {STDIN} (stdin) can be given only once")
    if STDIN in inputs and sys.stdin.isatty():
        raise SystemExit(f"lookalike: {STDIN} reads a picture from stdin, here a terminal: redirect one (< photo.jpg)")


def _parse_meta(pairs: Sequence[str]) -> dict[str, str]:
    meta = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--meta expects key=value, got {pair!r}")
        meta[key] = value
    return meta


class Output:
    """Prints results as JSON lines or readable text, and remembers failures.

    Results may come from two threads (gRPC's request thread reports unreadable files), so
    printing is serialised. On a terminal that also shows the progress bar (stdout and stderr
    both ttys), the bar is taken off its line for each result and drawn again below it."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.failures = 0
        self._lock = threading.Lock()
        self._bar: Any = None
        self._shared_terminal = sys.stdout.isatty() and sys.stderr.isatty()

    def attach(self, bar: Any) -> Any:
        """Keep results and this progress bar on separate lines; returns the bar."""
        if self._shared_terminal:
            self._bar = bar
        return bar

    def emit(self, record: dict[str, Any], text: str) -> None:
        line = json.dumps(record, ensure_ascii=False) if self.as_json else text
        with self._lock:
            if self._bar is None:
                print(line, flush=True)
                return
            self._bar.clear()
            print(line, flush=True)
            self._bar.refresh()

    def _failure(self, key: str, value: Any, label: str, message: str, error: Exception | str) -> None:
        """Count a failure and print {key: value, "error", "code"?, "reason"?} or `label<TAB>ERROR<TAB>message`."""
        with self._lock:
            self.failures += 1
        record: dict[str, Any] = {key: value, "error": message}
        if isinstance(error, LookalikeError):
            record["code"] = error.code
            record["reason"] = error.reason
        self.emit(record, f"{label}\tERROR\t{message}")

    def fail_line(self, line: int, error: Exception | str) -> None:
        """A line of an imported file that was not imported."""
        message = error if isinstance(error, str) else str(error)
        self._failure("line", line, f"line {line}", message, error)

    def fail(self, path: str, error: Exception) -> None:
        plain = isinstance(error, LookalikeError | NoPictures)
        message = str(error) if plain else f"{type(error).__name__}: {error}"
        self._failure("path", path, path, message, error)

    def fail_id(self, id: str, error: LookalikeError) -> None:
        """A call on one id (entry, stored check) that failed: {"id", "error", "code"}."""
        self.failures += 1
        self.emit({"id": id, "error": str(error), "code": error.code}, f"{id}\tERROR\t{error}")


def _progress(total: int | None, label: str, enabled: bool, unit: str = "img") -> Any:
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=label, file=sys.stderr, disable=not enabled, leave=False)


def _streamed(items: list[str], output: Output, make_request: Any) -> tuple[list[str], Iterator[Any]]:
    """Requests for readable inputs; unreadable ones are reported at once and skipped."""
    sent: list[str] = []

    def requests() -> Iterator[Any]:
        for item in items:
            try:
                request = make_request(_image(item))
            except OSError as error:
                output.fail(item, error)
                continue
            sent.append(item)
            yield request

    return sent, requests()


def _plural(count: int, singular: str, plural: str = "") -> str:
    """`1 entry`, `2 entries`."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


def _stops_the_run(error: LookalikeError, item: str) -> bool:
    """Whether an image's error would repeat for every image: report it once and stop."""
    return error.reason in REQUEST_WIDE_REASONS or _about_callback(error, item)


def _about_callback(error: LookalikeError, item: str) -> bool:
    """A URL error on an input that is no URL is about --callback-url."""
    return error.reason.startswith("URL_") and not _is_url(item)


def _summary(args: argparse.Namespace, started: float, counts: str, output: Output) -> None:
    """The closing line on stderr (left out with --quiet): what happened to each input, and how long it took."""
    if not args.quiet:
        print(f"{counts}, {output.failures} failed in {time.monotonic() - started:.1f} s", file=sys.stderr)


def cmd_add(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    started = time.monotonic()
    _one_stdin(args.inputs)
    items = list(expand_inputs(args.inputs))
    meta = _parse_meta(args.meta)
    sent, requests = _streamed(items, output, lambda image: pb.AddEntryRequest(list=args.list, image=image, meta=meta))
    counts = Counter[str]()
    with output.attach(_progress(len(items), f"adding to {args.list}", not args.quiet)) as bar:
        for index, result in client.add_many(requests):
            path = sent[index]
            bar.update(1)
            if isinstance(result, LookalikeError):
                if _stops_the_run(result, path):
                    raise result
                output.fail(path, result)
            else:
                counts["duplicate" if result.duplicate else "added"] += 1
                output.emit(
                    add_record(path, result), f"{path}\t{result.id}{'  (duplicate)' if result.duplicate else ''}"
                )
    summary = f"{counts['added']} added to {args.list}, {_plural(counts['duplicate'], 'duplicate')}"
    _summary(args, started, summary, output)


def add_record(path: str, result: AddResult) -> dict[str, Any]:
    return {
        "path": path,
        "id": result.id,
        "sha256": result.sha256,
        "duplicate": result.duplicate,
        "consistency_token": result.consistency_token,
    }


def _match_records(result: CheckResult) -> list[dict[str, Any]]:
    return [
        {
            "list": m.list,
            "id": m.id,
            "score": round(m.score, 6),
            "meta": m.meta,
            "decision": m.decision,
            "evidence": {k: v for k, v in asdict(m.evidence).items() if v is not None},
            "list_kind": m.list_kind,
            "guarded": m.guarded,
        }
        for m in result.matches
    ]


def check_record(path: str, result: CheckResult) -> dict[str, Any]:
    return {
        "path": path,
        "sha256": result.sha256,
        "decision": result.decision,
        "request_id": result.id,
        "matches": _match_records(result),
        "pdq": result.hashes.pdq,
        "pdq_quality": result.hashes.pdq_quality,
        "downgrades": [asdict(d) for d in result.downgrades],
    }


def _check_text(label: str, result: CheckResult, signals: bool = True) -> str:
    """`label<TAB>decision`, then the best match and its score (and its signals, unless `signals` is false);
    each further match (--top-k, --min-score) on a line of its own below, indented, with its own decision.
    A match found in part of the picture ends with where (`_where`)."""
    text = f"{label}\t{result.decision}"
    for number, match in enumerate(result.matches):
        shown = f"{match.list}/{match.id}\tscore {match.score:.3f}"
        if signals:
            shown += f"\t{'+'.join(match.evidence.signals) or '-'}"
        text += f"\t{shown}" if number == 0 else f"\n  {shown}\t{match.decision}"
        text += _where(match.evidence.embedding_view or match.evidence.pdq_view)
    return text


def _where(view: View | None) -> str:
    """`<TAB>in part WxH at X,Y` or `<TAB>in frame N` (from 0) for a match found in part of the picture; nothing
    for the whole picture."""
    if view is None or view.kind == "whole":
        return ""
    if view.kind == "frame":
        return f"\tin frame {view.frame}"
    box = view.box
    return f"\tin {view.kind} {box.width}x{box.height} at {box.x},{box.y}"


def cmd_check(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    started = time.monotonic()
    _one_stdin(args.inputs)
    lists = [name for name in args.lists.split(",") if name]
    items = list(expand_inputs(args.inputs))
    meta = _parse_meta(args.meta)

    def request(image: pb.Image) -> pb.CheckRequest:
        return client.check_request(
            image,
            lists,
            meta=meta,
            top_k=args.top_k,
            min_score=args.min_score,
            defer=args.defer,
            callback_url=args.callback_url,
            after=args.after,
        )

    sent, requests = _streamed(items, output, request)
    decisions = Counter[str]()
    with output.attach(_progress(len(items), "checking", not args.quiet)) as bar:
        for index, result in client.check_many(requests):
            path = sent[index]
            bar.update(1)
            if isinstance(result, LookalikeError):
                if _about_callback(result, path):
                    raise type(result)(f"--callback-url {args.callback_url}: {result.message}", result.reason)
                if _stops_the_run(result, path):
                    raise result
                output.fail(path, result)
                continue
            if result.status == "pending":
                decisions["queued"] += 1
                output.emit({"path": path, "id": result.id}, f"{path}\t{result.id}\tpending")
                continue
            decisions[result.decision] += 1
            output.emit(check_record(path, result), _check_text(path, result, signals=False))
    shown = ("reject", "review", "accept", "queued")
    tally = ", ".join(f"{decisions[name]} {name}" for name in shown if decisions[name] or name != "queued")
    _summary(args, started, f"{sum(decisions.values())} checked: {tally}", output)


# Hash lists ----------------------------------------------------------------


def cmd_add_hash(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    meta = _parse_meta(args.meta)
    entry = client.hash_entry(
        pdq=args.pdq, pdq_quality=args.quality, md5=args.md5, sha256=args.sha256, meta=meta, id=args.id
    )
    result = client.add_hash(args.list, entry)
    hashes = result.hashes
    record = {
        "id": result.id,
        "pdq": hashes.pdq,
        "pdq_quality": hashes.pdq_quality,
        "md5": hashes.md5,
        "sha256": hashes.sha256,
        "duplicate": result.duplicate,
        "consistency_token": result.consistency_token,
    }
    output.emit(record, f"{result.id}{'  (duplicate)' if result.duplicate else ''}")


def cmd_check_hash(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    lists = [name for name in args.lists.split(",") if name]
    result = client.check_hashes(
        lists,
        pdq=args.pdq,
        pdq_quality=args.quality,
        md5=args.md5,
        sha256=args.sha256,
        meta=_parse_meta(args.meta),
        top_k=args.top_k,
        min_score=args.min_score,
        after=args.after,
    )
    record = {
        "pdq": result.hashes.pdq,
        "pdq_quality": result.hashes.pdq_quality,
        "md5": result.hashes.md5,
        "sha256": result.hashes.sha256,
        "decision": result.decision,
        "request_id": result.id,
        "matches": _match_records(result),
    }
    output.emit(record, _check_text(args.pdq or args.md5 or args.sha256, result))


def _count_lines(path: str) -> int | None:
    """Lines in the file, for the progress bar (None for stdin)."""
    if path == "-":
        return None
    with open(path, "rb") as handle:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: handle.read(1 << 20), b""))


def cmd_import(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    """Stream the file's entries in batches; bad lines are reported with their number and skipped."""
    try:
        total = None if args.quiet else _count_lines(args.file)
        # surrogateescape: a line that is not UTF-8 is reported by number instead of ending the read
        handle = (
            open(sys.stdin.fileno(), encoding="utf-8", errors="surrogateescape", newline="", closefd=False)
            if args.file == "-"
            else open(args.file, encoding="utf-8", errors="surrogateescape", newline="")
        )
        file_format, lines = detect_format(handle, args.format, args.file)
    except OSError as error:
        raise SystemExit(f"lookalike: cannot read {args.file}: {error.strerror}") from None
    sent: list[int] = []  # line number of each entry sent, by stream position
    bad: deque[BadLine] = deque()  # filled by the sending thread, printed here in line order
    counts = {"added": 0, "duplicates": 0}

    def report_bad(before: int | None, bar: Any) -> None:
        while bad and (before is None or bad[0].line < before):
            item = bad.popleft()
            bar.update(1)
            output.fail_line(item.line, item.message)

    def entries() -> Iterator[pb.HashEntry]:
        for number, item in read_entries(lines, file_format):
            if isinstance(item, BadLine):
                bad.append(item)
            else:
                sent.append(number)
                yield item

    try:
        with output.attach(_progress(total, f"importing into {args.list}", not args.quiet, unit="line")) as bar:
            for index, result in client.import_stream(args.list, entries(), batch=args.batch):
                line = sent[index]
                report_bad(line, bar)
                bar.update(1)
                if isinstance(result, LookalikeError):
                    output.fail_line(line, result)
                else:
                    counts["duplicates" if result.duplicate else "added"] += 1
            report_bad(None, bar)
    finally:
        handle.close()
        summary = {"list": args.list, **counts, "failed": output.failures}
        output.emit(
            summary,
            f"{args.list}: {counts['added']} added, {counts['duplicates']} already listed, {output.failures} failed",
        )


def cmd_export(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    """Write a list's entries to stdout (or --output) as JSON lines, PDQ CSV or bare PDQ hashes."""
    file_format = args.format or (format_for(args.output, None) if args.output else JSONL)
    if args.no_header and file_format != PDQ_CSV:
        raise SystemExit(f"lookalike: --no-header applies to --format {PDQ_CSV} only, not {file_format}")
    total = client.get_list(args.list).entry_count
    out = open(args.output, "w", encoding="utf-8", newline="") if args.output else sys.stdout
    # entries written to the terminal would share its lines with the bar: no bar then
    bar_shown = not args.quiet and not (out is sys.stdout and out.isatty() and sys.stderr.isatty())
    try:
        with _progress(total, f"exporting {args.list}", bar_shown, unit="entry") as bar:

            def entries() -> Iterator[Any]:
                for entry in client.export_entries(args.list, with_embeddings=args.with_embeddings):
                    bar.update(1)
                    yield entry

            if file_format == JSONL:
                written, skipped = write_jsonl(entries(), out), 0
            elif file_format == PDQ_HASHES:
                written, skipped = write_pdq_hashes(entries(), out)
            else:
                written, skipped = write_pdq_csv(entries(), out, header=not args.no_header)
    finally:
        out.flush()
        if out is not sys.stdout:
            out.close()
    note = f" ({skipped} without a PDQ hash left out)" if skipped else ""
    print(f"exported {_plural(written, 'entry', 'entries')} of {args.list}{note}", file=sys.stderr)


def stored_check_record(record: CheckRecord) -> dict[str, Any]:
    """A stored check for `result --json`: its status, then the check's fields (or its error), then the webhook."""
    shown: dict[str, Any] = {"id": record.id, "status": record.status}
    if record.result is not None:
        shown |= {k: v for k, v in check_record("", record.result).items() if k != "path"}
    if record.error is not None:
        shown |= {"error": record.error["message"], "code": record.error["code"], "reason": record.error["reason"]}
    shown["submitted"] = record.submitted.isoformat()
    if record.completed is not None:
        shown["completed"] = record.completed.isoformat()
    if record.expires is not None:
        shown["expires"] = record.expires.isoformat()
    if record.delivery is not None:
        delivery = asdict(record.delivery)
        for moment in ("next_attempt", "delivered"):
            delivery[moment] = delivery[moment].isoformat() if delivery[moment] else None
        shown["delivery"] = delivery
    return shown


def cmd_result(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    for check_id in args.ids:
        try:
            if args.wait:
                record = client.wait_for_check(check_id, timeout=args.wait, owner=args.owner)
            else:
                record = client.get_check(check_id, owner=args.owner)
        except LookalikeError as error:
            output.fail_id(check_id, error)
            continue
        text = f"{record.id}\t{record.status}"
        if record.result is not None:
            text = _check_text(text, record.result, signals=False)
        if record.error is not None:
            output.failures += 1
            text += f"\t{record.error['code']}: {record.error['message']}"
        if record.delivery is not None:
            text += f"\twebhook {record.delivery.state} after {_plural(record.delivery.attempts, 'attempt')}"
        output.emit(stored_check_record(record), text)


def feedback_record(feedback: Feedback) -> dict[str, Any]:
    return {
        "time": feedback.time.isoformat(),
        "key_id": feedback.key_id,
        "check_id": feedback.check_id,
        "list": feedback.list,
        "entry_id": feedback.entry_id,
        "verdict": feedback.verdict,
        "note": feedback.note,
        "score": feedback.score,
        "decision": feedback.decision,
    }


def _feedback_text(feedback: Feedback) -> str:
    score = "-" if feedback.score is None else f"{feedback.score:.3f}"
    who = feedback.key_id or "-"
    return (
        f"{feedback.time.isoformat()}\t{who}\t{feedback.verdict}\t{feedback.list}/{feedback.entry_id}"
        f"\tscore {score}\tcheck {feedback.check_id}\t{feedback.note}"
    )


def cmd_feedback(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    if args.feedback_command == "add":
        feedback = client.submit_feedback(
            args.check_id, args.verdict, entry_id=args.entry, list_name=args.list, note=args.note, owner=args.owner
        )
        output.emit(feedback_record(feedback), _feedback_text(feedback))
    elif args.feedback_command == "ls":
        for feedback in client.feedback(args.list, since=args.since):
            output.emit(feedback_record(feedback), _feedback_text(feedback))


def _advice_record(advice: ThresholdAdvice) -> dict[str, Any]:
    return asdict(advice)


def calibration_record(calibration: Calibration) -> dict[str, Any]:
    return {
        "list": calibration.list,
        "review": _advice_record(calibration.review),
        "reject": _advice_record(calibration.reject),
        "checks_seen": calibration.checks_seen,
        "feedback_seen": calibration.feedback_seen,
        "applied": calibration.applied,
        "notes": list(calibration.notes),
    }


def _calibration_text(calibration: Calibration) -> str:
    lines = [
        f"{calibration.list}: {calibration.feedback_seen} feedback, "
        f"{_plural(calibration.checks_seen, 'stored check')} scored"
    ]
    for name, advice in (("review", calibration.review), ("reject", calibration.reject)):
        lines.append(
            f"  {name} {advice.current:g} -> {advice.recommended:g}: avoids "
            f"{_plural(advice.errors_avoided, 'reported error')}, {advice.errors_left} left; changes "
            f"{_plural(advice.checks_affected, 'stored check')} and "
            f"{_plural(advice.confirmed_affected, 'confirmed match', 'confirmed matches')}"
        )
    lines += [f"  note: {note}" for note in calibration.notes]
    lines.append("  applied" if calibration.applied else "  not applied (use --apply)")
    return "\n".join(lines)


def cmd_calibrate(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    calibration = client.calibrate(args.list, apply=args.apply)
    output.emit(calibration_record(calibration), _calibration_text(calibration))


def cmd_confirm(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    for entry_id in args.ids:
        try:
            client.confirm_entry(args.list, entry_id)
        except LookalikeError as error:
            output.fail_id(entry_id, error)
            continue
        output.emit({"list": args.list, "id": entry_id, "confirmed": True}, f"{entry_id}\tconfirmed")


def cmd_webhooks(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    secret = client.webhook_secret()
    output.emit({"secret": secret}, secret)


def cmd_remove(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    for entry_id in args.ids:
        try:
            client.remove(args.list, entry_id)
        except LookalikeError as error:
            output.fail_id(entry_id, error)
            continue
        output.emit({"id": entry_id, "removed": True}, f"{entry_id}\tremoved")


def list_record(info: ListInfo) -> dict[str, Any]:
    return {
        "name": info.name,
        "count": info.entry_count,
        "description": info.description,
        "review_threshold": info.review_threshold,
        "reject_threshold": info.reject_threshold,
        "model": info.model,
        "created": info.created.isoformat(),
        "dihedral": info.dihedral,
        "kind": info.kind,
        "guarded": [
            {
                "id": guard.id,
                "since": guard.since.isoformat(),
                "recent_matches": round(guard.recent_matches, 3),
                "usual_matches": round(guard.usual_matches, 3),
            }
            for guard in info.guarded
        ],
        "thumbnails": info.thumbnails,
        "keypoints": info.keypoints,
        "checks_last_day": {
            "accept": info.checks_last_day.accept,
            "review": info.checks_last_day.review,
            "reject": info.checks_last_day.reject,
        },
    }


def _list_text(info: ListInfo) -> str:
    text = (
        f"{info.name}\t{_plural(info.entry_count, 'entry', 'entries')}\tmodel {info.model}\t"
        f"review ≥ {info.review_threshold:g}\treject ≥ {info.reject_threshold:g}\t"
        f"{'' if info.dihedral else 'no rotations/mirrors\t'}{info.description}"
    )
    if info.kind != "disallow":
        text += f"\t({info.kind} list)"
    if info.thumbnails:
        text += "\tkeeps thumbnails"
    if not info.keypoints:
        text += "\tno keypoints"
    if info.guarded:
        text += f"\t{_plural(len(info.guarded), 'entry', 'entries')} under flood guard"
    return text


def _guard_lines(info: ListInfo) -> str:
    return "".join(
        f"\n  flood guard: {guard.id}\tsince {guard.since.isoformat()}\t{guard.recent_matches:.0f} recent matches "
        f"(usual {guard.usual_matches:.1f}); confirm with `lookalike confirm {info.name} {guard.id}`"
        for guard in info.guarded
    )


def cmd_lists(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    if args.lists_command == "create":
        info = client.create_list(
            args.name,
            description=args.description,
            review_threshold=args.review_threshold,
            reject_threshold=args.reject_threshold,
            model=args.model or "",
            dihedral=args.dihedral,
            kind=args.kind,
            thumbnails=args.thumbnails,
            keypoints=args.keypoints,
        )
        output.emit(list_record(info), f"created {_list_text(info)}")
    elif args.lists_command == "ls":
        for info in client.lists():
            output.emit(list_record(info), _list_text(info))
    elif args.lists_command == "show":
        info = client.get_list(args.name)
        output.emit(list_record(info), _list_text(info) + _guard_lines(info))
    elif args.lists_command == "update":
        info = client.update_list(
            args.name,
            description=args.description,
            review_threshold=args.review_threshold,
            reject_threshold=args.reject_threshold,
            dihedral=args.dihedral,
            thumbnails=args.thumbnails,
            keypoints=args.keypoints,
        )
        output.emit(list_record(info), f"updated {_list_text(info)}")
    elif args.lists_command == "rm":
        if not args.yes and sys.stdin.isatty() and sys.stderr.isatty() and not _confirmed(client, args.name):
            raise SystemExit(f"lookalike: {args.name} not deleted")
        deleted = client.delete_list(args.name)
        output.emit(
            {"name": args.name, "deleted": True, "entries_deleted": deleted},
            f"deleted {args.name} ({_plural(deleted, 'entry', 'entries')})",
        )


def _confirmed(client: LookalikeClient, name: str) -> bool:
    """Ask on the terminal before deleting a list; only `y` or `yes` deletes it."""
    count = _plural(client.get_list(name).entry_count, "entry", "entries")
    print(f"delete list {name} and its {count}? This cannot be undone. [y/N] ", end="", file=sys.stderr, flush=True)
    try:
        answer = sys.stdin.readline()
    except KeyboardInterrupt:
        answer = ""
    return answer.strip().lower() in ("y", "yes")


def entry_record(entry: Entry) -> dict[str, Any]:
    return {
        "list": entry.list,
        "id": entry.id,
        "meta": entry.meta,
        "created": entry.created.isoformat(),
        "model": entry.model,
        **asdict(entry.hashes),
        "added_by": entry.added_by,
    }


def _meta_text(meta: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(meta.items())) or "-"


def cmd_entry(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    entry = client.get_entry(args.list, args.id)
    record = entry_record(entry)
    shown = record | {"meta": _meta_text(entry.meta)}
    output.emit(record, "\n".join(f"{k}\t{v}" for k, v in shown.items()))


def cmd_entries(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    page_size = min(args.limit, ENTRIES_PAGE_MAX) if args.limit else ENTRIES_PAGE_MAX
    for number, entry in enumerate(client.entries(args.list, q=args.q, page_size=page_size), start=1):
        by = f"by {entry.added_by}" if entry.added_by else "-"
        output.emit(entry_record(entry), f"{entry.id}\t{entry.created.isoformat()}\t{by}\t{_meta_text(entry.meta)}")
        if number == args.limit:
            return


def key_record(info: KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "role": info.role,
        "lists": info.lists,
        "created": info.created.isoformat(),
        "created_by": info.created_by,
        "revoked": info.revoked.isoformat() if info.revoked else None,
    }


def _key_text(info: KeyInfo) -> str:
    scope = ",".join(info.lists) or "all lists"
    state = f"revoked {info.revoked.isoformat()}" if info.revoked else "valid"
    return f"{info.id}\t{info.role}\t{scope}\t{state}\t{info.name}"


def cmd_keys(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    if args.keys_command == "create":
        lists = [name for name in args.lists.split(",") if name]
        created = client.create_key(args.role, lists, name=args.name)
        info = created.info
        if args.json:
            record = {"id": info.id, "name": info.name, "role": info.role, "lists": info.lists, "key": created.secret}
            output.emit(record, "")
        else:
            print(created.secret, flush=True)
            print(f"created {_key_text(info)}; the key above is shown only now", file=sys.stderr)
    elif args.keys_command == "ls":
        for info in client.keys():
            output.emit(key_record(info), _key_text(info))
    elif args.keys_command == "revoke":
        info = client.revoke_key(args.id)
        output.emit({"id": info.id, "revoked": True}, f"revoked {_key_text(info)}")


def parse_time(text: str) -> float:
    """Unix seconds, or ISO-8601 (UTC unless it names an offset)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (use ISO-8601 or unix seconds)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def audit_record(record: AuditRecord) -> dict[str, Any]:
    return {
        "time": record.time.isoformat(),
        "key_id": record.key_id,
        "action": record.action,
        "list": record.list,
        "entry_id": record.entry_id,
        "detail": record.detail,
    }


def cmd_audit(client: LookalikeClient, args: argparse.Namespace, output: Output) -> None:
    for record in client.audit(args.list, since=args.since):
        detail = " ".join(f"{k}={v}" for k, v in record.detail.items())
        text = f"{record.time.isoformat()}\t{record.key_id or '-'}\t{record.action}\t{record.list}\t{record.entry_id}"
        output.emit(audit_record(record), f"{text}\t{detail}")


def _bounded(kind: type[int] | type[float], low: float, high: float | None = None) -> Any:
    """An argparse type for a number in [low, high] (no upper bound when `high` is None)."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a{'n integer' if kind is int else ' number'}: {text!r}") from None
        if not (low <= value and (high is None or value <= high)):  # NaN fails too
            bounds = f"lie in [{low:g}, {high:g}]" if high is not None else f"be at least {low:g}"
            raise argparse.ArgumentTypeError(f"must {bounds}, got {text}")
        return value

    return parse


SCORE = _bounded(float, 0, 1)


class _HelpWithDefaults(argparse.HelpFormatter):
    """Shows an option's default after its help, unless the help already says it or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (
            not text
            or "default" in text
            or not action.option_strings
            or default is None
            or default is False
            or default in ("", [], argparse.SUPPRESS)
        ):
            return action.help
        return f"{text} (default: %(default)s)"


def _explain(parser: argparse.ArgumentParser) -> None:
    """Every command's --help starts with what it does (its one-line help) and shows defaults."""
    parser.formatter_class = _HelpWithDefaults
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            said = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, command in action.choices.items():
                text = said.get(name, "")
                if command.description is None and text:
                    command.description = f"{text[0].upper()}{text[1:]}."
                _explain(command)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lookalike-client")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server",
        default=os.environ.get("LOOKALIKE_SERVER", DEFAULT_SERVER),
        help=f"HOST:PORT of the server (env LOOKALIKE_SERVER; default {DEFAULT_SERVER})",
    )
    common.add_argument("--json", action="store_true", help="print JSON, one object per line")
    common.add_argument("--quiet", "-q", action="store_true", help="no progress bar (nor the summary of add and check)")
    common.add_argument(
        "--api-key",
        default=None,
        help="API key sent with every call (env LOOKALIKE_API_KEY, which keeps it out of `ps`)",
    )
    common.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CA certificates")
    common.add_argument(
        "--tls-ca",
        default=None,
        help="use TLS, trusting this CA (PEM; env LOOKALIKE_TLS_CA)",
    )
    common.add_argument(
        "--tls-cert",
        default=None,
        help="client certificate (PEM) for servers that require one (env LOOKALIKE_CLIENT_CERT)",
    )
    common.add_argument(
        "--tls-key",
        default=None,
        help="private key of --tls-cert (PEM; env LOOKALIKE_CLIENT_KEY)",
    )

    parser = argparse.ArgumentParser(prog="lookalike", description="Near-duplicate image disallow lists.")
    parser.add_argument("--version", action="version", version=f"lookalike {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    commands.add_parser("serve", help="run the server (see `lookalike serve --help`)", add_help=False)
    commands.add_parser(
        "verify", help="check a data folder's records, changing nothing (`lookalike verify DATA_DIR`)", add_help=False
    )

    lists = commands.add_parser("lists", help="create, show and delete lists")
    lists_commands = lists.add_subparsers(dest="lists_command", required=True, metavar="ACTION")
    create = lists_commands.add_parser("create", parents=[common], help="create a list")
    create.add_argument("name", help="the new list's name")
    create.add_argument(
        "--review-threshold", type=SCORE, help="score from which a match goes to review, 0-1 (default 0.5)"
    )
    create.add_argument(
        "--reject-threshold", type=SCORE, help="score from which a match is rejected, 0-1 (default 0.8)"
    )
    create.add_argument("--model", choices=MODEL_CHOICES, help="embedding model (default: the server's)")
    create.add_argument("--description", default="", help="what the list holds, for people")
    dihedral_help = "match PDQ's rotations and mirrors of what is checked (default: on)"
    create.add_argument("--dihedral", action=argparse.BooleanOptionalAction, help=dihedral_help)
    create.add_argument(
        "--kind",
        choices=("disallow", "allow"),
        default="disallow",
        help="allow: pictures never to flag (their matches outrank disallow matches)",
    )
    thumbnails_help = (
        "keep a small thumbnail (160 px WebP) of each picture added, for the dashboard (default: off, no picture "
        "is kept; never on lists of illegal material); --no-thumbnails deletes those kept"
    )
    create.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, default=False, help=thumbnails_help)
    keypoints_help = (
        "keep each picture's keypoints (about 17 KiB), which send a copy the embedding is unsure of (a heavy crop, "
        "a small paste, a screen photo) to review (default: on; off for lists of millions); --no-keypoints "
        "deletes those kept"
    )
    create.add_argument("--keypoints", action=argparse.BooleanOptionalAction, help=keypoints_help)
    lists_commands.add_parser("ls", parents=[common], help="list all lists")
    show = lists_commands.add_parser("show", parents=[common], help="show one list")
    show.add_argument("name", help="the list")
    update = lists_commands.add_parser("update", parents=[common], help="change thresholds or description")
    update.add_argument("name", help="the list")
    update.add_argument("--review-threshold", type=SCORE, help="score from which a match goes to review, 0-1")
    update.add_argument("--reject-threshold", type=SCORE, help="score from which a match is rejected, 0-1")
    update.add_argument("--description", help="what the list holds, for people")
    update.add_argument("--dihedral", action=argparse.BooleanOptionalAction, help=dihedral_help)
    update.add_argument("--thumbnails", action=argparse.BooleanOptionalAction, help=thumbnails_help)
    update.add_argument("--keypoints", action=argparse.BooleanOptionalAction, help=keypoints_help)
    remove_list = lists_commands.add_parser("rm", parents=[common], help="delete a list and all its entries")
    remove_list.add_argument("name", help="the list")
    remove_list.add_argument(
        "--yes", "-y", action="store_true", help="do not ask first (it asks only when run on a terminal)"
    )

    add = commands.add_parser("add", parents=[common], help="add images (files, folders, URLs) to a list")
    inputs_help = "picture files, folders (searched recursively), http(s) URLs the server fetches, or - for stdin"
    add.add_argument("list", help="the list to add to")
    add.add_argument("inputs", nargs="+", metavar="PATH|DIR|URL", help=inputs_help)
    add.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="meta for every entry")

    check = commands.add_parser("check", parents=[common], help="check images against lists")
    after_help = (
        "a write's consistency_token (add --json prints it): the server answers once it has applied that write, "
        "or refuses with REPLICA_BEHIND when it has not within the deadline"
    )
    lists_help = 'lists to check against, comma-separated ("": every list the key may use); allow lists always count'
    top_k_help = f"show up to N nearest entries, even below review, 0-{MAX_TOP_K} (default 0: matches from review up)"
    check.add_argument("lists", metavar="LIST[,LIST...]", help=lists_help)
    check.add_argument("inputs", nargs="+", metavar="PATH|DIR|URL", help=inputs_help)
    check.add_argument("--top-k", type=_bounded(int, 0, MAX_TOP_K), default=0, help=top_k_help)
    check.add_argument("--min-score", type=SCORE, help="show matches scoring at least S, 0-1")
    check.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="meta echoed back")
    check.add_argument("--defer", action="store_true", help="queue the checks; print their ids (see `result`)")
    check.add_argument("--callback-url", default="", metavar="URL", help="POST each result there, signed")
    check.add_argument("--after", default="", metavar="TOKEN", help=after_help)

    result = commands.add_parser("result", parents=[common], help="the stored result of checks, by id")
    result.add_argument("ids", nargs="+", metavar="ID", help="check ids (a check's request_id)")
    result.add_argument(
        "--wait", type=_bounded(float, 0), default=0.0, metavar="SECONDS", help="wait up to this long while pending"
    )
    result.add_argument("--owner", metavar="KEY_ID", help=OWNER_HELP)

    feedback = commands.add_parser("feedback", help="send and list feedback on checks")
    feedback_commands = feedback.add_subparsers(dest="feedback_command", required=True, metavar="ACTION")
    feedback_add = feedback_commands.add_parser("add", parents=[common], help="a verdict on a stored check")
    feedback_add.add_argument("check_id", metavar="CHECK_ID", help="the stored check judged")
    feedback_add.add_argument("--verdict", required=True, choices=tuple(VERDICTS))
    feedback_add.add_argument("--entry", default="", help="the entry judged (default: the best flagging match)")
    feedback_add.add_argument("--list", default="", help="the entry's list, when the check did not come near it")
    feedback_add.add_argument("--note", default="", help="free text kept with the verdict")
    feedback_add.add_argument("--owner", metavar="KEY_ID", help=OWNER_HELP)
    feedback_ls = feedback_commands.add_parser("ls", parents=[common], help="list feedback, oldest first (admin)")
    feedback_ls.add_argument("--list", default="", help="only feedback on this list")
    feedback_ls.add_argument("--since", type=parse_time, metavar="TIME", help="ISO-8601 or unix seconds")

    calibrate = commands.add_parser(
        "calibrate", parents=[common], help="thresholds that would have avoided the reported errors (admin)"
    )
    calibrate.add_argument("list", help="the list whose feedback is weighed")
    calibrate.add_argument("--apply", action="store_true", help="set the recommended thresholds (audited)")

    confirm = commands.add_parser(
        "confirm", parents=[common], help="lift the flood guard of entries: their match rate is normal (admin)"
    )
    confirm.add_argument("list", help="the entries' list")
    confirm.add_argument("ids", nargs="+", metavar="ID", help="entries under flood guard")

    webhooks = commands.add_parser("webhooks", help="webhook settings (admin)")
    webhooks_commands = webhooks.add_subparsers(dest="webhooks_command", required=True, metavar="ACTION")
    webhooks_commands.add_parser("secret", parents=[common], help="print the secret webhooks are signed with")

    def hash_arguments(command: argparse.ArgumentParser) -> None:
        command.add_argument("--pdq", default="", metavar="HEX", help="PDQ hash, 64 hex characters")
        quality_help = "the PDQ hash's quality, 0-100 (default 100)"
        command.add_argument("--quality", type=_bounded(int, 0, 100), help=quality_help)
        command.add_argument("--md5", default="", metavar="HEX", help="MD5 of the picture's bytes")
        command.add_argument("--sha256", default="", metavar="HEX", help="SHA-256 of the picture's bytes")

    add_hash = commands.add_parser("add-hash", parents=[common], help="add an entry by its hashes (no picture)")
    add_hash.add_argument("list", help="the list to add to")
    hash_arguments(add_hash)
    add_hash.add_argument("--id", default="", help="entry id (default: generated)")
    add_hash.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="meta of the entry")

    check_hash = commands.add_parser("check-hash", parents=[common], help="check hashes computed elsewhere")
    check_hash.add_argument("lists", metavar="LIST[,LIST...]", help=lists_help)
    hash_arguments(check_hash)
    check_hash.add_argument("--top-k", type=_bounded(int, 0, MAX_TOP_K), default=0, help=top_k_help)
    check_hash.add_argument("--min-score", type=SCORE, help="show matches scoring at least S, 0-1")
    check_hash.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE", help="meta echoed back")
    check_hash.add_argument("--after", default="", metavar="TOKEN", help=after_help)

    import_file = commands.add_parser("import", parents=[common], help="import a hash list file into a list")
    import_file.add_argument("list", help="the list to import into")
    import_file.add_argument("file", metavar="FILE", help="the file, or - for stdin")
    import_file.add_argument(
        "--format", choices=FORMATS, help="default: recognised from the first lines, else pdq-csv for *.csv, else jsonl"
    )
    import_file.add_argument("--batch", type=_bounded(int, 1), default=IMPORT_BATCH, help="entries per transaction")

    export = commands.add_parser("export", parents=[common], help="write a list's entries to stdout")
    export.add_argument("list", help="the list to export")
    export.add_argument("--format", choices=EXPORT_FORMATS, help="default: jsonl (pdq-csv for an --output *.csv)")
    export.add_argument("--no-header", action="store_true", help="pdq-csv rows only: hash,quality,filename")
    export.add_argument("--with-embeddings", action="store_true", help="include embeddings (jsonl only)")
    export.add_argument("--output", "-o", metavar="FILE", help="write here instead of stdout")

    remove = commands.add_parser("remove", parents=[common], help="remove entries by id")
    remove.add_argument("list", help="the entries' list")
    remove.add_argument("ids", nargs="+", metavar="ID", help="ids of the entries to remove")

    entry = commands.add_parser("entry", parents=[common], help="show one entry")
    entry.add_argument("list", help="the entry's list")
    entry.add_argument("id", help="the entry's id")

    entries = commands.add_parser("entries", parents=[common], help="a list's entries, newest first")
    entries.add_argument("list", help="the list")
    entries.add_argument(
        "--q",
        default="",
        metavar="TEXT",
        help="only entries whose id is TEXT, whose SHA-256, MD5 or PDQ hash (hex) is TEXT, "
        "or with a meta value containing TEXT (any case)",
    )
    entries.add_argument(
        "--limit", type=_bounded(int, 0), default=0, metavar="N", help="print at most N entries (default 0: all)"
    )

    keys = commands.add_parser("keys", help="create, list and revoke API keys (admin)")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    create_key = keys_commands.add_parser("create", parents=[common], help="create a key; prints it once")
    create_key.add_argument("--role", required=True, choices=("admin", "writer", "checker"))
    create_key.add_argument("--lists", default="", metavar="LIST[,LIST...]", help="lists the key is limited to")
    create_key.add_argument("--name", default="", help="a label, e.g. the service that uses the key")
    keys_commands.add_parser("ls", parents=[common], help="list keys (revoked ones too)")
    revoke_key = keys_commands.add_parser("revoke", parents=[common], help="revoke a key at once")
    revoke_key.add_argument("id", help="the key's id (`keys ls`), not the key itself")

    audit = commands.add_parser("audit", parents=[common], help="changes to lists, entries and keys (admin)")
    audit.add_argument("--list", default="", help="only changes to this list")
    audit.add_argument("--since", type=parse_time, metavar="TIME", help="ISO-8601 (UTC unless given) or unix seconds")
    _explain(parser)
    return parser


HANDLERS = {
    "add": cmd_add,
    "check": cmd_check,
    "add-hash": cmd_add_hash,
    "check-hash": cmd_check_hash,
    "import": cmd_import,
    "export": cmd_export,
    "remove": cmd_remove,
    "lists": cmd_lists,
    "entry": cmd_entry,
    "entries": cmd_entries,
    "keys": cmd_keys,
    "audit": cmd_audit,
    "result": cmd_result,
    "feedback": cmd_feedback,
    "calibrate": cmd_calibrate,
    "confirm": cmd_confirm,
    "webhooks": cmd_webhooks,
}


def _speaks_tls(target: str) -> bool:
    """Whether the server at HOST:PORT completes a TLS handshake (its certificate unchecked: this only
    tells a plain client why it was refused)."""
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        return False
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        with (
            socket.create_connection((host, int(port)), timeout=3) as raw,
            context.wrap_socket(raw, server_hostname=host),
        ):
            return True
    except OSError:  # ssl.SSLError included: no TLS there
        return False


def _hint(error: LookalikeError, target: str, tls: bool) -> str:
    """What to do about a common failure, in the CLI's terms ("" when there is nothing to add)."""
    if error.reason == "LIST_NOT_FOUND":
        return "`lookalike lists ls` shows the lists there are; `lookalike lists create NAME` makes one"
    if error.code != "UNAVAILABLE" or error.reason != "UNAVAILABLE":  # UNAVAILABLE without a reason: no server answered
        return ""
    message = error.message
    if tls and "WRONG_VERSION_NUMBER" in message:
        return f"the server at {target} does not speak TLS: leave out --tls and --tls-ca (and LOOKALIKE_TLS_CA)"
    if tls and "Socket closed" in message:
        return "the server ended the TLS handshake: it may want a client certificate it trusts (--tls-cert, --tls-key)"
    if "CERTIFICATE_VERIFY_FAILED" in message:
        return "the server's certificate is not signed by a CA you trust: pass --tls-ca with the CA that signs it"
    if "errors resolving" in message:
        return f"no such host in {target}: check --server HOST:PORT (or LOOKALIKE_SERVER)"
    if not tls and _speaks_tls(target):
        return (
            f"the server at {target} speaks TLS: pass --tls-ca CA.pem (or --tls if a public CA signed its certificate)"
        )
    return f"is `lookalike serve` running on {target}? (--server HOST:PORT or LOOKALIKE_SERVER say where to look)"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:
        try:
            from lookalike.server.app import main as serve
        except ImportError as error:
            print(f"lookalike serve needs the server packages ({error}); install lookalike[server]", file=sys.stderr)
            return 2
        return serve(argv[1:])
    if argv[:1] == ["verify"]:
        try:
            from lookalike.server.verify import main as verify
        except ImportError as error:
            print(f"lookalike verify needs the server packages ({error}); install lookalike[server]", file=sys.stderr)
            return 2
        return verify(argv[1:])
    args = build_parser().parse_args(argv)
    output = Output(args.json)
    client: LookalikeClient | None = None
    try:
        with LookalikeClient(
            args.server,
            api_key=args.api_key,
            tls=args.tls,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        ) as client:
            HANDLERS[args.command](client, args, output)
    except LookalikeError as error:
        advice = _hint(error, client.target, client.tls) if client is not None else ""
        if args.json:
            record = {"error": str(error), "code": error.code, "reason": error.reason}
            print(json.dumps(record | ({"hint": advice} if advice else {})), flush=True)
        print(f"lookalike: {error}", file=sys.stderr)
        if advice:
            print(f"hint: {advice}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): stop quietly, as Unix tools do, and keep Python from
        # complaining again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 1 if output.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
