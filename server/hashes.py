"""Hashes as the outside world writes them, and entries and checks given by hashes instead of pictures.

Inside the server every hash (SHA-256, MD5, PDQ, pHash) is bytes; hex is only what callers, hash files,
logs and audit details see. Each kind has one codec here (`SHA256`, `MD5`, `PDQ`, `PHASH`): its length,
how a caller's text is parsed, how it is written out.

Industry lists travel as PDQ hashes and MD5/SHA-256 digests. Here they are
validated into store entries, and a PDQ hash's rotations and mirrors are derived
from its bits, since there is no picture to hash eight times.

PDQ's bit k (hex as ThreatExchange prints it: bit 255 first) says whether DCT
coefficient (k // 16 + 1, k % 16 + 1), vertical then horizontal frequency, lies
above the median of all 256. Transposing the picture transposes that 16×16 block;
mirroring it negates the coefficients of odd frequency along the mirrored axis, so
their bits flip. The flip is exact only where a coefficient does not fall between
the old and the new median: derived variants land within a few bits of those PDQ
computes from the pixels, which themselves differ from the hash of a really
turned picture by up to about 40 bits (PDQ's own resampling is not symmetric).
"""

from __future__ import annotations

import math
import re
import string
import uuid
from dataclasses import dataclass, field

import numpy as np

from lookalike.client.errors import InvalidArgument
from lookalike.index.list_index import EMBEDDING_DIM
from lookalike.server.records import ListRecord, NewEntry, encode_embedding, validate_entry_id, validate_meta

ASSUMED_PDQ_QUALITY = 100
"""Quality of a PDQ hash given without one: shared lists hold hashes their makers judged worth sharing."""
EMBEDDING_NORM_TOLERANCE = 1e-3
"""Stored embeddings are unit vectors (cosine = inner product); an imported one must be too."""

_HEX_DIGITS = frozenset(string.hexdigits)
_LOWER_HEX = re.compile(r"[0-9a-f]*").fullmatch
_SIDE = 16
_ODD_FREQUENCY = (np.arange(_SIDE) % 2 == 0).astype(np.uint8)
"""Index i holds frequency i + 1: these rows (columns) change sign when the picture is mirrored."""


@dataclass(frozen=True)
class HashCodec:
    """One kind of hash: its length in bytes, and its hex as callers write it (any case, spaces around)."""

    size: int
    what: str
    """How messages name it ("a PDQ hash")."""
    reason: str
    """The reason of INVALID_ARGUMENT for bad text."""

    @property
    def chars(self) -> int:
        return 2 * self.size

    def parse(self, text: str) -> bytes:
        """A caller's hex as bytes (b"" when blank); INVALID_ARGUMENT saying what is wrong otherwise."""
        if not text:
            return b""
        value = text.strip().lower()
        if not value:
            return b""
        if len(value) != self.chars or not _HEX_DIGITS.issuperset(value):
            shown = value[:80] + ("…" if len(value) > 80 else "")
            problem = "not hexadecimal" if len(value) == self.chars else f"{len(value)} characters"
            raise InvalidArgument(
                f"{self.what} must be {self.chars} hex characters; got {shown!r} ({problem})", self.reason
            )
        return bytes.fromhex(value)

    def format(self, value: bytes) -> str:
        """The hash as lowercase hex ("" for none), as every caller and file reads it."""
        return value.hex()

    def stored(self, text: str) -> bytes | None:
        """Hex as the server writes it (lowercase, exact length, or "" for none) as bytes; None for anything else."""
        if len(text) not in (0, self.chars) or not _LOWER_HEX(text):
            return None
        return bytes.fromhex(text)

    def is_hex(self, text: str) -> bool:
        """Whether a caller's `text` reads as this kind of hash (any case)."""
        return len(text) == self.chars and _HEX_DIGITS.issuperset(text)


SHA256 = HashCodec(32, "a SHA-256", "SHA256_INVALID")
MD5 = HashCodec(16, "an MD5", "MD5_INVALID")
PDQ = HashCodec(32, "a PDQ hash", "PDQ_INVALID")
PHASH = HashCodec(8, "a pHash", "PHASH_INVALID")


def parse_quality(quality: int | None) -> int:
    """A PDQ quality in [0, 100]; absent means `ASSUMED_PDQ_QUALITY`."""
    if quality is None:
        return ASSUMED_PDQ_QUALITY
    if not 0 <= quality <= 100:
        raise InvalidArgument(f"PDQ quality must lie in [0, 100], got {quality}", "PDQ_QUALITY_INVALID")
    return quality


@dataclass(frozen=True)
class HashAdd:
    """An entry to add by its hashes (as text, unchecked), with an optional embedding (float32 LE bytes)."""

    id: str = ""
    pdq: str = ""
    pdq_quality: int | None = None
    md5: str = ""
    sha256: str = ""
    phash: str = ""
    meta: dict[str, str] = field(default_factory=dict)
    embedding: bytes = b""
    model: str = ""


def _embedding(item: HashAdd, record: ListRecord) -> np.ndarray | None:
    if not item.embedding:
        return None
    if item.model != record.model:
        raise InvalidArgument(
            f"the embedding is from model {item.model or 'unnamed'!r} but list {record.name!r} uses "
            f"{record.model!r}; import into a list of that model, or without embeddings",
            "EMBEDDING_MODEL_MISMATCH",
        )
    if len(item.embedding) != 4 * EMBEDDING_DIM:
        raise InvalidArgument(
            f"an embedding must be {EMBEDDING_DIM} float32 values ({4 * EMBEDDING_DIM} bytes), "
            f"got {len(item.embedding)} bytes",
            "EMBEDDING_INVALID",
        )
    vector = np.frombuffer(item.embedding, dtype="<f4").astype(np.float32)
    norm = float(np.linalg.norm(vector))
    if not math.isfinite(norm) or abs(norm - 1.0) > EMBEDDING_NORM_TOLERANCE:
        raise InvalidArgument(f"an embedding must be a unit vector; its norm is {norm:.4g}", "EMBEDDING_INVALID")
    return vector


def hash_entry(item: HashAdd, record: ListRecord) -> NewEntry:
    """Validate a hash entry for `record`'s list: each hash well-formed, at least one of PDQ, MD5
    and SHA-256, an embedding only from the list's own model. Without an id it gets a new one."""
    if item.id:
        validate_entry_id(item.id)
    validate_meta(item.meta)
    pdq, md5, sha256 = PDQ.parse(item.pdq), MD5.parse(item.md5), SHA256.parse(item.sha256)
    phash = PHASH.parse(item.phash)
    if not (pdq or md5 or sha256):
        raise InvalidArgument("an entry needs a PDQ hash, an MD5 or a SHA-256", "HASH_MISSING")
    quality = parse_quality(item.pdq_quality) if pdq else 0
    embedding = _embedding(item, record)
    return NewEntry(
        id=item.id or uuid.uuid4().hex,
        sha256=sha256,
        pdq=pdq,
        pdq_quality=quality,
        phash=phash,
        embedding=b"" if embedding is None else encode_embedding(embedding),
        meta=dict(item.meta),
        md5=md5,
    )


def _bits(pdq: bytes) -> np.ndarray:
    """The 16×16 bit block: [i, j] is bit 16·i + j (the packed bytes hold bit 255 first)."""
    return np.unpackbits(np.frombuffer(pdq, dtype=np.uint8))[::-1].reshape(_SIDE, _SIDE)


def _packed(bits: np.ndarray) -> bytes:
    return np.packbits(bits.reshape(-1)[::-1]).tobytes()


def _mirror_left_right(bits: np.ndarray) -> np.ndarray:
    mirrored: np.ndarray = bits ^ _ODD_FREQUENCY[None, :]
    return mirrored


def _mirror_top_bottom(bits: np.ndarray) -> np.ndarray:
    mirrored: np.ndarray = bits ^ _ODD_FREQUENCY[:, None]
    return mirrored


def pdq_dihedral(pdq: bytes) -> tuple[bytes, ...]:
    """The PDQ hashes of the picture's eight rotations and mirrors, from its hash alone, named as
    PIL's `Image.Transpose`: itself, ROTATE_90, ROTATE_180, ROTATE_270 (counter-clockwise),
    FLIP_LEFT_RIGHT, FLIP_TOP_BOTTOM, TRANSPOSE, TRANSVERSE."""
    bits = _bits(pdq)
    flipped = _mirror_left_right(bits)
    upside_down = _mirror_top_bottom(bits)
    half_turn = _mirror_left_right(upside_down)
    variants = (
        bits,
        flipped.T,
        half_turn,
        upside_down.T,  # = the transpose mirrored left to right
        flipped,
        upside_down,
        bits.T,
        half_turn.T,
    )
    return tuple(_packed(np.ascontiguousarray(variant)) for variant in variants)
