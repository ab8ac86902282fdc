"""Checking encoded image bytes before they enter the store: what format and size they are,
and whether they decode completely. Nothing here re-encodes an image."""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from planktonzilla.constants import IMAGE_SUFFIXES
from planktonzilla.exceptions import ReaderError
from planktonzilla.fileio import RefusedInput

#: Formats the store accepts (as Pillow names them). GIF and multi-page TIFF: first frame.
ACCEPTED_FORMATS = frozenset({"PNG", "JPEG", "TIFF", "BMP", "GIF"})
# Leading bytes of the accepted formats: a file that starts like an image but does not decode
# is `corrupt`; anything else Pillow cannot identify is `unsupported_format`.
IMAGE_MAGIC = (b"\x89PNG", b"\xff\xd8", b"II*\x00", b"MM\x00*", b"BM", b"GIF8")

#: Plankton vignettes are small (median ~80x80 px); these limits only stop abuse.
MAX_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 64_000_000


@dataclass(frozen=True, slots=True)
class ImageInfo:
    format: str  # lower-case: png, jpeg, tiff, bmp, gif
    width: int
    height: int
    channels: int


class ImageRejected(ReaderError):
    """The bytes are not an acceptable image; `reason` is the machine-readable code."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def probe(
    data: bytes, *, name: str = "", max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS
) -> ImageInfo:
    """Identify and fully decode `data`; raise `ImageRejected` with a reason when it is not a
    complete image of an accepted format within the limits. `name` only improves messages
    (its suffix decides `corrupt` versus `unsupported_format` for unidentifiable bytes)."""
    if not data:
        raise ImageRejected("empty", "zero-byte file")
    if len(data) > max_bytes:
        raise ImageRejected("too_large", f"{len(data):,} bytes is over the {max_bytes:,} limit")
    with open_image(data, name=name) as im:
        if im.format not in ACCEPTED_FORMATS:
            raise ImageRejected("unsupported_format", f"{im.format} images are not accepted")
        width, height = im.size
        if width <= 0 or height <= 0:
            raise ImageRejected("corrupt", f"invalid size {width}x{height}")
        if width * height > max_pixels:
            raise ImageRejected(
                "decompression_bomb",
                f"{width}x{height} = {width * height:,} pixels is over the {max_pixels:,} limit",
            )
        try:
            im.load()  # full decode: catches truncated and corrupt pixel data
        except OSError as exc:
            raise ImageRejected(_reason(exc), f"decoding failed: {exc}") from None
        except (SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            raise ImageRejected("corrupt", f"decoding failed: {exc}") from None
        return ImageInfo(im.format.lower(), width, height, len(im.getbands()))


def open_image(data: bytes, *, name: str = "") -> Image.Image:
    """Pillow's lazy open (header only) of `data`; `ImageRejected` when it cannot identify
    the bytes (`corrupt` if they start like an accepted image or `name` has an image suffix,
    else `unsupported_format`), or when Pillow itself calls them a decompression bomb."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise ImageRejected("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        if data.startswith(IMAGE_MAGIC) or name.lower().endswith(tuple(IMAGE_SUFFIXES)):
            raise ImageRejected("corrupt", "not decodable as an image") from None
        raise ImageRejected("unsupported_format", "not an image file") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageRejected(_reason(exc), f"unreadable image header: {exc}") from None


def _reason(exc: Exception) -> str:
    # Pillow says "truncated" both when headers and when pixel data end early.
    return "truncated" if "truncat" in str(exc).lower() else "corrupt"


def examine(image, origin: str, max_bytes: int, max_pixels: int):
    """Read, probe and hash one image (the part of ingest that runs in
    worker processes, which import only this light module).
    `image` is a Record's `image` field. Returns (bytes, ImageInfo, sha256 hex) or, for a
    bad input, (None, reason, message)."""
    try:
        if isinstance(image, bytes | bytearray):
            data = image
        else:  # loaders that can stop at the limit (files, zip members) never read past it
            read_at_most = getattr(image, "read_at_most", None)
            data = read_at_most(max_bytes) if read_at_most else image()
    except RefusedInput as exc:
        return None, exc.reason, exc.message
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        return None, "unreadable", f"cannot read: {exc}"
    try:
        info = probe(data, name=origin, max_bytes=max_bytes, max_pixels=max_pixels)
    except ImageRejected as exc:
        return None, exc.reason, exc.message
    return bytes(data), info, hashlib.sha256(data).hexdigest()


def examine_many(args):
    # Only the image references travel to workers, not whole records: pickling records both
    # ways cost as much as decoding.
    images, max_bytes, max_pixels = args
    return [examine(image, origin, max_bytes, max_pixels) for image, origin in images]
