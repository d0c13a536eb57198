"""PDQ as ThreatExchange's reference hasher computes it from a file, for pictures with transparency and with
an EXIF orientation: shared lists are made with that hasher, so our PDQ of the same file must land within a few
bits of theirs, while the embedding still sees the picture turned upright and flattened onto white.

The reference loaders read a file's pixels as stored: pdq-photo-hasher through CImg and ImageMagick's
`convert FILE pnm:-` (red, green and blue written, alpha dropped; no auto-orient), pdq/python and
python-threatexchange through Pillow without `exif_transpose`. `reference_pdq` does that, then hashes
with pdqhash, which wraps the reference C++ hashing core."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pdqhash
from PIL import Image, ImageOps

from lookalike.server.embedder import embedding_input
from lookalike.server.imaging import decode_image
from tests.conftest import ServerHandle, distinct_photos

FEW_BITS = 8
"""How far our PDQ may land from the reference computation: JPEG draft decoding and the bounded size of
large pictures move a few bits (a match needs 31 or fewer)."""
MAX_PIXELS = 50_000_000


def reference_pdq(data: bytes) -> tuple[str, int]:
    """The file's PDQ (hex) and quality as the reference hashers compute it: pixels as stored, red, green and
    blue only (the colour under transparency kept), the whole picture into the C++ hashing core."""
    with Image.open(io.BytesIO(data)) as image:
        rgb = np.asarray(image.convert("RGB"))
    bits, quality = pdqhash.compute(rgb)
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex(), int(quality)


def flattened_turned_pdq(data: bytes) -> str:
    """What the server computed before following the reference: the picture turned upright, on white."""
    with Image.open(io.BytesIO(data)) as image:
        shown = (ImageOps.exif_transpose(image) or image).convert("RGBA")
    white = Image.new("RGBA", shown.size, (255, 255, 255, 255))
    bits, _ = pdqhash.compute(np.asarray(Image.alpha_composite(white, shown).convert("RGB")))
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def bits_apart(first: str, second: str) -> int:
    codes = np.frombuffer(bytes.fromhex(first + second), np.uint8).reshape(2, -1)
    return int(np.bitwise_count(codes[0] ^ codes[1]).sum())


def photo(path: Path) -> Image.Image:
    with Image.open(path) as image:
        return image.convert("RGB")


def enlarged(picture: Image.Image) -> Image.Image:
    """Large enough that a JPEG is draft-decoded and a PNG scaled down before hashing."""
    return picture.resize((picture.width * 5 // 2, picture.height * 5 // 2), Image.Resampling.BICUBIC)


def encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def clear_block(picture: Image.Image) -> tuple[slice, slice]:
    """Rows and columns made transparent: a block, not whole columns or rows (a change that is constant
    along one axis falls in DCT coefficients PDQ leaves out)."""
    return slice(0, picture.height * 3 // 5), slice(0, picture.width * 2 // 5)


def with_transparency(picture: Image.Image) -> Image.Image:
    """The photo as RGBA: a block fully transparent and a band half so, the photo's own colours left under
    both (not white); the rest opaque."""
    alpha = np.full((picture.height, picture.width), 255, dtype=np.uint8)
    alpha[clear_block(picture)] = 0
    alpha[picture.height * 3 // 4 :, picture.width // 2 :] //= 2
    rgba = picture.convert("RGBA")
    rgba.putalpha(Image.fromarray(alpha, "L"))
    return rgba


def transparent_pngs(picture: Image.Image) -> dict[str, bytes]:
    """PNGs of the photo with transparency: RGBA, grey with alpha, a palette with a transparent index (black
    under it), and an RGBA picture large enough to be scaled down before hashing."""
    rgba = with_transparency(picture)
    palette = picture.quantize(colors=255)  # index 255 stays free for the transparent colour
    indices = np.asarray(palette).copy()
    indices[clear_block(picture)] = 255
    clear = Image.fromarray(indices, "P")
    clear.putpalette(palette.getpalette()[: 255 * 3] + [0, 0, 0])
    return {
        "RGBA": encode(rgba, "PNG"),
        "LA": encode(rgba.convert("LA"), "PNG"),
        "P": encode(clear, "PNG", transparency=255),
        "RGBA, large": encode(with_transparency(enlarged(picture)), "PNG"),
    }


def oriented_jpeg(picture: Image.Image, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(picture, "JPEG", quality=90, exif=exif.tobytes())


def oriented_jpegs(picture: Image.Image) -> dict[str, bytes]:
    """JPEGs of the photo tagged with each EXIF orientation, and a large one that is draft-decoded."""
    files = {f"orientation {orientation}": oriented_jpeg(picture, orientation) for orientation in range(1, 9)}
    files["orientation 6, large"] = oriented_jpeg(enlarged(picture), 6)
    return files


def test_our_pdq_is_the_reference_hashers_and_a_straight_list_finds_their_hash_of_the_same_file(
    lookalike: ServerHandle,
) -> None:
    """PNGs with transparency (the colour under it not white) and JPEGs with every EXIF orientation: the
    server's PDQ lies within a few bits of the reference computation, and a list that matches no rotations
    or mirrors finds a hash-only entry made the reference way from the same file."""
    client = lookalike.client
    for path in distinct_photos(2, seed=71):
        picture = photo(path)
        files = {**transparent_pngs(picture), **oriented_jpegs(picture)}
        for number, (name, data) in enumerate(files.items()):
            listed, quality = reference_pdq(data)
            if name != "orientation 1":  # the files tell the reference way apart: flattened or turned is far
                assert bits_apart(flattened_turned_pdq(data), listed) > 31, (path.name, name)
            list_name = f"straight-{path.stem}-{number}"
            client.create_list(list_name, dihedral=False)
            client.add_hash(list_name, client.hash_entry(pdq=listed, pdq_quality=quality, id="shared"))

            result = client.check(data, [list_name])

            assert bits_apart(result.hashes.pdq, listed) <= FEW_BITS, (path.name, name)
            (match,) = result.matches
            assert match.id == "shared" and "pdq" in match.evidence.signals, (path.name, name)
            assert match.evidence.pdq_distance is not None and match.evidence.pdq_distance <= FEW_BITS


def test_pdq_reads_the_pixels_as_stored_and_the_rest_sees_them_upright_on_white() -> None:
    """PDQ's picture is the file's pixels as stored (decoded at the draft's scale); the picture shown is the same
    at the model's input size, turned upright and flattened onto white."""
    picture = photo(distinct_photos(1, seed=72)[0])
    rgba = with_transparency(picture)
    decoded = decode_image(encode(rgba, "PNG"), MAX_PIXELS)
    on_white = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    factor = round(rgba.width / decoded.pdq_rgb.width)
    assert np.array_equal(np.asarray(decoded.pdq_rgb), np.asarray(rgba.convert("RGB").reduce(factor)))
    shown = embedding_input(on_white.reduce(factor))
    assert np.abs(np.asarray(decoded.rgb, np.int16) - np.asarray(shown, np.int16)).max() <= 1

    data = oriented_jpeg(picture, 6)
    decoded = decode_image(data, MAX_PIXELS)
    with Image.open(io.BytesIO(data)) as stored:
        stored.draft("RGB", decoded.pdq_rgb.size)
        as_stored = stored.convert("RGB")
    assert np.array_equal(np.asarray(decoded.pdq_rgb), np.asarray(as_stored))
    upright = embedding_input(as_stored).transpose(Image.Transpose.ROTATE_270)
    assert np.array_equal(np.asarray(decoded.rgb), np.asarray(upright))

    plain = decode_image(encode(picture, "JPEG", quality=90), MAX_PIXELS)
    assert np.array_equal(np.asarray(plain.rgb), np.asarray(embedding_input(plain.pdq_rgb)))  # neither: one picture


def test_the_embedding_still_sees_an_exif_oriented_picture_upright(lookalike: ServerHandle) -> None:
    client = lookalike.client
    client.create_list("pictures")
    picture = photo(distinct_photos(1, seed=73)[0])
    upright = picture.transpose(Image.Transpose.ROTATE_270)
    client.add("pictures", encode(upright, "JPEG", quality=90), id="upright")
    (match,) = client.check(oriented_jpeg(picture, 6), ["pictures"]).matches
    assert match.id == "upright" and match.evidence.embedding_similarity is not None
    assert match.evidence.embedding_similarity > 0.95
