"""Hash list files: JSON lines (lossless) and ThreatExchange's PDQ CSV, read into entries and written from them.

JSON lines: one object per entry with `id`, `pdq`, `pdq_quality`, `md5`, `sha256`,
`phash`, `meta` (an object of strings), `created` (ISO-8601; informational) and,
when exported with embeddings, `model` and `embedding` (base64 of float32
little-endian values). Empty fields are left out.

PDQ CSV: ThreatExchange's hashers print `hash,quality,filename` per picture, no
header. A file without a header is read that way (further columns become meta
`column4`, `column5`, ...; an empty quality means none given). A file whose first
row names its columns is read by name: `hash` (or `pdq`), `quality`, `id`, `md5`
and `sha256` are those fields, every other column is meta (`meta.X` is meta `X`,
for keys that clash with those names); empty cells are left out. Exports write
such a header: `hash,quality,id`, then `sha256`/`md5` when any entry has them,
then the meta keys.

Only the shape of a line is checked here (UTF-8, JSON, types, base64); the server
checks the hashes themselves and reports each bad entry, so both paths name the line.
Files are best opened with errors="surrogateescape": a line that is not UTF-8 is
then reported like any other bad line.
"""

from __future__ import annotations

import base64
import binascii
import csv
import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from client.lookalike_pb import lookalike_pb2 as pb
from client.types import Entry

JSONL = "jsonl"
PDQ_CSV = "pdq-csv"
FORMATS = (JSONL, PDQ_CSV)

_TEXT_FIELDS = ("id", "pdq", "md5", "sha256", "phash", "model")
_JSONL_FIELDS = frozenset((*_TEXT_FIELDS, "pdq_quality", "meta", "embedding", "created"))
_HASH_COLUMNS = ("hash", "pdq", "pdq_hash")
_QUALITY_COLUMNS = ("quality", "pdq_quality")
_RESERVED_COLUMNS = frozenset((*_HASH_COLUMNS, *_QUALITY_COLUMNS, "id", "md5", "sha256"))
_HEADERLESS_META = ("filename",)
"""Names of the columns after hash and quality in a file without a header (ThreatExchange's hasher output)."""
_META_PREFIX = "meta."


@dataclass(frozen=True)
class BadLine:
    """A line that cannot be an entry, and why."""

    line: int
    message: str


Parsed = tuple[int, pb.HashEntry | BadLine]
"""A line number (from 1) and the entry it holds, or why it holds none."""


def _require_utf8(text: str) -> None:
    """ValueError when `text` holds bytes that were not UTF-8 (read with errors="surrogateescape")."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not UTF-8 text") from None


def format_for(path: str, given: str | None) -> str:
    """The format named, else guessed from the file name (`.csv`: PDQ CSV), else JSON lines."""
    if given:
        return given
    return PDQ_CSV if path.lower().endswith(".csv") else JSONL


def read_entries(lines: Iterable[str], file_format: str) -> Iterator[Parsed]:
    return read_pdq_csv(lines) if file_format == PDQ_CSV else read_jsonl(lines)


# JSON lines -----------------------------------------------------------------


def _jsonl_entry(record: Any) -> pb.HashEntry:
    """The entry a decoded line describes; ValueError saying what is wrong with it."""
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - _JSONL_FIELDS)
    if unknown:
        raise ValueError(f"unknown field {unknown[0]!r} (known: {', '.join(sorted(_JSONL_FIELDS))})")
    entry = pb.HashEntry()
    for name in _TEXT_FIELDS:
        value = record.get(name, "")
        if not isinstance(value, str):
            raise ValueError(f"{name!r} must be a string, got {type(value).__name__}")
        setattr(entry, name, value)
    quality = record.get("pdq_quality")
    if quality is not None:
        if isinstance(quality, bool) or not isinstance(quality, int):
            raise ValueError(f"'pdq_quality' must be an integer, got {quality!r}")
        if not -(2**31) <= quality < 2**31:
            raise ValueError(f"'pdq_quality' must lie in [0, 100], got {quality}")
        entry.pdq_quality = quality
    meta = record.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise ValueError("'meta' must be an object of strings")
    entry.meta.update(meta)
    embedding = record.get("embedding", "")
    if not isinstance(embedding, str):
        raise ValueError("'embedding' must be base64 text")
    try:
        entry.embedding = base64.b64decode(embedding, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("'embedding' is not valid base64") from None
    return entry


def read_jsonl(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of a JSON-lines file; blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            _require_utf8(line)
            yield number, _jsonl_entry(json.loads(line))
        except json.JSONDecodeError as error:
            yield number, BadLine(number, f"broken JSON: {error}")
        except ValueError as error:
            yield number, BadLine(number, str(error))


def jsonl_record(entry: Entry) -> dict[str, Any]:
    """An entry as one JSON-lines object (what `read_jsonl` reads back)."""
    hashes = entry.hashes
    record: dict[str, Any] = {"id": entry.id}
    if hashes.pdq:
        record["pdq"] = hashes.pdq
        record["pdq_quality"] = hashes.pdq_quality
    for name, value in (("md5", hashes.md5), ("sha256", hashes.sha256), ("phash", hashes.phash)):
        if value:
            record[name] = value
    if entry.meta:
        record["meta"] = entry.meta
    if entry.embedding:
        record["model"] = entry.model
        record["embedding"] = base64.b64encode(entry.embedding).decode("ascii")
    record["created"] = entry.created.isoformat()
    return record


def write_jsonl(entries: Iterable[Entry], out: TextIO) -> int:
    written = 0
    for entry in entries:
        out.write(json.dumps(jsonl_record(entry), ensure_ascii=False) + "\n")
        written += 1
    return written


# PDQ CSV ---------------------------------------------------------------------


def _is_header(row: Sequence[str]) -> bool:
    """Whether a first row names columns: it names a hash column (a hash would not)."""
    names = {cell.strip().lower() for cell in row}
    return bool(names & {*_HASH_COLUMNS, "md5", "sha256"})


def _headerless_names(width: int) -> list[str]:
    names = ["hash", "quality", *_HEADERLESS_META]
    return names + [f"column{index}" for index in range(len(names) + 1, width + 1)]


def _csv_entry(row: Sequence[str], names: Sequence[str]) -> pb.HashEntry:
    if len(row) > len(names):
        raise ValueError(f"{len(row)} columns, but the header names {len(names)}")
    entry = pb.HashEntry()
    for name, raw in zip(names, row, strict=False):
        value = raw.strip()
        field = name.strip().lower()
        if not value:
            continue
        if field in _HASH_COLUMNS:
            entry.pdq = value
        elif field in _QUALITY_COLUMNS:
            try:
                quality = int(value)
            except ValueError:
                raise ValueError(f"quality must be an integer from 0 to 100, got {value!r}") from None
            if not -(2**31) <= quality < 2**31:
                raise ValueError(f"quality must be an integer from 0 to 100, got {value!r}")
            entry.pdq_quality = quality
        elif field in ("id", "md5", "sha256"):
            setattr(entry, field, value)
        else:
            entry.meta[name.strip().removeprefix(_META_PREFIX)] = raw
    return entry


def read_pdq_csv(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of a PDQ CSV file, with or without a header row; blank lines are skipped."""
    reader = csv.reader(lines)
    header: list[str] | None = None
    first = True
    line = 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as error:
            yield line, BadLine(line, f"broken CSV: {error}")
            line = reader.line_num + 1
            continue
        start, line = line, reader.line_num + 1  # a quoted cell may span lines: report where the row starts
        if not any(cell.strip() for cell in row):
            continue
        if first:
            first = False
            if _is_header(row):
                header = list(row)
                continue
        try:
            for cell in row:
                _require_utf8(cell)
            yield start, _csv_entry(row, header if header is not None else _headerless_names(len(row)))
        except ValueError as error:
            yield start, BadLine(start, str(error))


def _meta_column(key: str) -> str:
    """A meta key's column name: prefixed where it would read as one of the entry's own columns."""
    clashes = key.strip().lower() in _RESERVED_COLUMNS or key.startswith(_META_PREFIX) or key != key.strip()
    return _META_PREFIX + key if clashes else key


def write_pdq_csv(entries: Iterable[Entry], out: TextIO) -> tuple[int, int]:
    """Entries that have a PDQ hash, under a header; returns (written, skipped for lack of a PDQ).
    The rows are held until the end: the header names every meta key."""
    rows: list[Entry] = []
    skipped = 0
    for entry in entries:
        if entry.hashes.pdq:
            rows.append(entry)
        else:
            skipped += 1
    digests = [name for name in ("sha256", "md5") if any(getattr(e.hashes, name) for e in rows)]
    meta_keys = sorted({key for entry in rows for key in entry.meta})
    meta_columns = [_meta_column(key) for key in meta_keys]
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["hash", "quality", "id", *digests, *meta_columns])
    for entry in rows:
        hashes = entry.hashes
        writer.writerow(
            [
                hashes.pdq,
                hashes.pdq_quality,
                entry.id,
                *(getattr(hashes, name) for name in digests),
                *(entry.meta.get(key, "") for key in meta_keys),
            ]
        )
    return len(rows), skipped
