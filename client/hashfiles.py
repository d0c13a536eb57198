"""Hash list files in the layouts of the programs that make them, read into entries; JSON lines (lossless),
PDQ CSV and bare PDQ hashes written from them.

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

Bare PDQ hashes (`pdq-hashes`): one hex hash per line, read and written. Other layouts, read
only: `te-signals`, a signal type, a space and the hash (`pdq HASH`, as ThreatExchange's
`threatexchange` CLI and its file exchange write them; `md5` and `sha256` lines too), then an
optional quality or a note; `hash-filename`, CSV rows of a hash and a file name; `pdq-details`,
the reference PDQ hasher's `--details` lines (`hash=...,norm=...,delta=...,quality=...,filename=...`;
norm and delta are left out, since they follow from the hashes, other keys become meta);
`te-dataset`, the CSV that `threatexchange dataset -P --csv` writes
(`signal_type,signal_str,collab,category,tags`; pdq rows become entries with the other columns as
meta, rows of signal types that hash no picture, such as url or video_md5, are bad lines).
`detect_format` tells them apart from a file's first non-empty lines.

Only the shape of a line is checked here (UTF-8, JSON, types, base64); the server
checks the hashes themselves and reports each bad entry, so both paths name the line.
Files are best opened with errors="surrogateescape": a line that is not UTF-8 is
then reported like any other bad line.
"""

from __future__ import annotations

import base64
import binascii
import csv
import itertools
import json
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from lookalike.client.lookalike_pb import lookalike_pb2 as pb
from lookalike.client.types import Entry

JSONL = "jsonl"
PDQ_CSV = "pdq-csv"
PDQ_HASHES = "pdq-hashes"
TE_SIGNALS = "te-signals"
HASH_FILENAME = "hash-filename"
PDQ_DETAILS = "pdq-details"
TE_DATASET = "te-dataset"
FORMATS = (JSONL, PDQ_CSV, PDQ_HASHES, TE_SIGNALS, HASH_FILENAME, PDQ_DETAILS, TE_DATASET)
"""Layouts `read_entries` reads."""
EXPORT_FORMATS = (JSONL, PDQ_CSV, PDQ_HASHES)
"""Layouts entries are written in."""

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


DETECTION_LINES = 20
"""Non-empty lines `detect_format` reads: enough to see a file name where a quality could stand."""
_HEX = re.compile(r"[0-9a-fA-F]+")
_SIGNAL_LINE = re.compile(r"([A-Za-z][A-Za-z0-9_]*)\s+[0-9a-fA-F]+(\s|$)")


def _first_cells(line: str) -> list[str]:
    try:
        return [cell.strip() for cell in next(csv.reader([line]), [])]
    except csv.Error:
        return []


def _is_integer(text: str) -> bool:
    return text.lstrip("+-").isdigit()


def _recognise(head: Sequence[str]) -> str | None:
    """The layout the first non-empty lines are in, or None when they look like none of them."""
    first = head[0].strip()
    cells = _first_cells(first)
    if first.startswith("{"):
        return JSONL
    if first.lower().startswith("hash="):
        return PDQ_DETAILS
    if _is_dataset_header(cells):
        return TE_DATASET
    if _is_header(cells):
        return PDQ_CSV
    if _SIGNAL_LINE.match(first):
        return TE_SIGNALS
    if _HEX.fullmatch(first):
        return PDQ_HASHES
    if len(cells) >= 2 and _HEX.fullmatch(cells[0]):
        # ThreatExchange's hasher writes hash,quality,filename; a quality is a number, a file name seldom is
        named = any(len(row) >= 2 and row[1] and not _is_integer(row[1]) for row in map(_first_cells, head))
        return HASH_FILENAME if named else PDQ_CSV
    return None


def detect_format(lines: Iterable[str], given: str | None, path: str = "") -> tuple[str, Iterator[str]]:
    """The file's format: the one given, else recognised from its first non-empty lines, else guessed
    from its name (`format_for`); and its lines, those read to tell included."""
    iterator = iter(lines)
    if given:
        return given, iterator
    head: list[str] = []
    read: list[str] = []
    for line in iterator:
        read.append(line)
        if line.strip():
            head.append(line)
            if len(head) == DETECTION_LINES:
                break
    found = _recognise(head) if head else None
    return found or format_for(path, None), itertools.chain(read, iterator)


def read_entries(lines: Iterable[str], file_format: str) -> Iterator[Parsed]:
    readers = {
        PDQ_CSV: read_pdq_csv,
        PDQ_HASHES: read_pdq_hashes,
        TE_SIGNALS: read_te_signals,
        HASH_FILENAME: read_hash_filename,
        PDQ_DETAILS: read_pdq_details,
        TE_DATASET: read_te_dataset,
    }
    return readers.get(file_format, read_jsonl)(lines)


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


def _quality(value: str) -> int:
    """A quality cell as a number; the server checks its range, this only that it is one protobuf holds."""
    try:
        quality = int(value)
    except ValueError:
        raise ValueError(f"quality must be an integer from 0 to 100, got {value!r}") from None
    if not -(2**31) <= quality < 2**31:
        raise ValueError(f"quality must be an integer from 0 to 100, got {value!r}")
    return quality


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
            entry.pdq_quality = _quality(value)
        elif field in ("id", "md5", "sha256"):
            setattr(entry, field, value)
        else:
            entry.meta[name.strip().removeprefix(_META_PREFIX)] = raw
    return entry


def _csv_rows(lines: Iterable[str]) -> Iterator[tuple[int, list[str] | BadLine]]:
    """Each non-blank row of a CSV file with the line it starts on (a quoted cell may span lines),
    or why it could not be read."""
    reader = csv.reader(lines)
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
        start, line = line, reader.line_num + 1
        if any(cell.strip() for cell in row):
            yield start, row


def _read_csv(
    lines: Iterable[str],
    entry: Callable[[list[str], list[str] | None], pb.HashEntry],
    header: Callable[[list[str]], bool],
) -> Iterator[Parsed]:
    """Entries of a CSV file, its first row taken as a header where `header` says it is one."""
    names: list[str] | None = None
    first = True
    for start, row in _csv_rows(lines):
        if isinstance(row, BadLine):
            yield start, row
            continue
        if first:
            first = False
            if header(row):
                names = list(row)
                continue
        try:
            for cell in row:
                _require_utf8(cell)
            yield start, entry(row, names)
        except ValueError as error:
            yield start, BadLine(start, str(error))


def read_pdq_csv(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of a PDQ CSV file, with or without a header row; blank lines are skipped."""
    return _read_csv(lines, lambda row, names: _csv_entry(row, names or _headerless_names(len(row))), _is_header)


def _meta_column(key: str) -> str:
    """A meta key's column name: prefixed where it would read as one of the entry's own columns."""
    clashes = key.strip().lower() in _RESERVED_COLUMNS or key.startswith(_META_PREFIX) or key != key.strip()
    return _META_PREFIX + key if clashes else key


@dataclass(frozen=True)
class CsvColumns:
    """The columns of a PDQ CSV file, known from its entries before the first row is written (the header
    names every meta key), so that the rows can then be written as they come (a server streams them)."""

    header: bool
    digests: tuple[str, ...] = ()
    meta_keys: tuple[str, ...] = ()
    filename: bool = False
    """Without a header: whether rows carry meta `filename` as their third cell."""

    @classmethod
    def of(cls, entries: Iterable[Entry], *, header: bool = True) -> CsvColumns:
        """The columns the entries with a PDQ hash need (entries without one are never written)."""
        digests: set[str] = set()
        meta_keys: set[str] = set()
        for entry in entries:
            if entry.hashes.pdq:
                digests.update(name for name in ("sha256", "md5") if getattr(entry.hashes, name))
                meta_keys.update(entry.meta)
        ordered = tuple(name for name in ("sha256", "md5") if name in digests)
        return cls(header, ordered, tuple(sorted(meta_keys)), "filename" in meta_keys)

    def write_header(self, out: TextIO) -> None:
        if self.header:
            meta_columns = [_meta_column(key) for key in self.meta_keys]
            csv.writer(out, lineterminator="\n").writerow(["hash", "quality", "id", *self.digests, *meta_columns])

    def write_row(self, out: TextIO, entry: Entry) -> bool:
        """Write the entry's row; False (nothing written) when it has no PDQ hash."""
        hashes = entry.hashes
        if not hashes.pdq:
            return False
        writer = csv.writer(out, lineterminator="\n")
        if not self.header:
            filename = [entry.meta.get("filename", "")] if self.filename else []
            writer.writerow([hashes.pdq, hashes.pdq_quality, *filename])
            return True
        writer.writerow(
            [
                hashes.pdq,
                hashes.pdq_quality,
                entry.id,
                *(getattr(hashes, name) for name in self.digests),
                *(entry.meta.get(key, "") for key in self.meta_keys),
            ]
        )
        return True


def write_pdq_csv(entries: Iterable[Entry], out: TextIO, *, header: bool = True) -> tuple[int, int]:
    """Entries that have a PDQ hash, under a header; returns (written, skipped for lack of a PDQ).
    The rows are held until the end: the header names every meta key. Without a header, rows are
    what ThreatExchange's hasher prints and its C++ tools read (they stop at a header row):
    `hash,quality,filename`, the file name from meta `filename` (left out when no entry has one)."""
    held = list(entries)
    columns = CsvColumns.of(held, header=header)
    columns.write_header(out)
    written = sum(columns.write_row(out, entry) for entry in held)
    return written, len(held) - written


def write_pdq_hashes(entries: Iterable[Entry], out: TextIO) -> tuple[int, int]:
    """The PDQ hashes alone, one a line; returns (written, skipped for lack of a PDQ)."""
    written = skipped = 0
    for entry in entries:
        if entry.hashes.pdq:
            out.write(entry.hashes.pdq + "\n")
            written += 1
        else:
            skipped += 1
    return written, skipped


# Other programs' layouts -------------------------------------------------------


def _read_lines(lines: Iterable[str], entry: Callable[[str], pb.HashEntry]) -> Iterator[Parsed]:
    """Entries of a file with one entry per line; blank lines are skipped."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            _require_utf8(line)
            yield number, entry(line.strip())
        except ValueError as error:
            yield number, BadLine(number, str(error))


def _bare_hash_entry(text: str) -> pb.HashEntry:
    words = text.split()
    if len(words) != 1:
        raise ValueError(f"expected one PDQ hash alone on the line, got {len(words)} words")
    return pb.HashEntry(pdq=words[0])


def read_pdq_hashes(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of a file of bare PDQ hashes, one a line (their quality unknown: the server's default)."""
    return _read_lines(lines, _bare_hash_entry)


_SIGNAL_FIELDS = {"pdq": "pdq", "md5": "md5", "sha256": "sha256"}
"""ThreatExchange signal types that are hashes of a picture, and the entry field each fills."""


def _signal_entry(kind: str, signal: str) -> pb.HashEntry:
    field = _SIGNAL_FIELDS.get(kind.strip().lower())
    if field is None:
        raise ValueError(
            f"signal type {kind!r} is not a picture hash this server keeps (it keeps {', '.join(_SIGNAL_FIELDS)})"
        )
    entry = pb.HashEntry()
    setattr(entry, field, signal.strip())
    return entry


def _signal_line_entry(text: str) -> pb.HashEntry:
    words = text.split(maxsplit=2)
    if len(words) < 2:
        raise ValueError("expected a signal type and its hash, e.g. 'pdq HASH'")
    entry = _signal_entry(words[0], words[1])
    rest = words[2].strip() if len(words) == 3 else ""
    if entry.pdq and _is_integer(rest):
        entry.pdq_quality = _quality(rest)
    elif rest:
        entry.meta["note"] = rest
    return entry


def read_te_signals(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of `TYPE HASH [QUALITY or note]` lines, as ThreatExchange's CLI prints and its file exchange reads."""
    return _read_lines(lines, _signal_line_entry)


_DERIVED_DETAILS = frozenset(("norm", "delta"))
"""Keys of the hasher's --details output left out: the hash's bit count and its distance to the previous file's."""


def _details_entry(text: str) -> pb.HashEntry:
    """A `hash=...,quality=...,filename=...` line; the file name comes last and may hold commas."""
    entry = pb.HashEntry()
    rest = text
    while rest:
        key, equals, rest = rest.partition("=")
        key = key.strip()
        if not equals or not key:
            raise ValueError(f"expected key=value pairs separated by commas, got {key!r}")
        if key.lower() == "filename":
            value, rest = rest, ""
        else:
            value, _, rest = rest.partition(",")
        name = key.lower()
        if name == "hash":
            entry.pdq = value.strip()
        elif name == "quality":
            entry.pdq_quality = _quality(value.strip())
        elif name not in _DERIVED_DETAILS and value:
            entry.meta[key] = value
    return entry


def read_pdq_details(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of the reference PDQ hasher's --details output (pdq-photo-hasher -d)."""
    return _read_lines(lines, _details_entry)


def _hash_filename_entry(row: list[str], names: list[str] | None) -> pb.HashEntry:
    entry = pb.HashEntry(pdq=row[0].strip())
    filename = ",".join(row[1:])  # a file name with commas, written unquoted, spans several cells
    if filename.strip():
        entry.meta["filename"] = filename
    return entry


def read_hash_filename(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of `hash,filename` rows (a first row naming its columns is skipped)."""
    return _read_csv(lines, _hash_filename_entry, _is_header)


TE_DATASET_COLUMNS = ("signal_type", "signal_str", "collab", "category", "tags")
"""The header `threatexchange dataset -P --csv` writes."""


def _is_dataset_header(row: Sequence[str]) -> bool:
    return {"signal_type", "signal_str"} <= {cell.strip().lower() for cell in row}


def _dataset_entry(row: list[str], names: list[str] | None) -> pb.HashEntry:
    columns = [name.strip().lower() for name in names or ()]
    if not {"signal_type", "signal_str"} <= set(columns):
        raise ValueError(f"the first row must name the columns ({','.join(TE_DATASET_COLUMNS)})")
    if len(row) > len(columns):
        raise ValueError(f"{len(row)} columns, but the header names {len(columns)}")
    cells = dict(zip(columns, row, strict=False))
    entry = _signal_entry(cells.pop("signal_type", ""), cells.pop("signal_str", ""))
    for name, value in cells.items():
        if value.strip():
            entry.meta[name] = value
    return entry


def read_te_dataset(lines: Iterable[str]) -> Iterator[Parsed]:
    """Entries of a ThreatExchange dataset CSV: pdq rows, with their collaboration, category and tags as meta."""
    return _read_csv(lines, _dataset_entry, _is_dataset_header)
