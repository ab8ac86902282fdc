"""Turning an upload (images and zip archives) into checked images, within `Limits`.

Every file's type is sniffed from its bytes, never from its name: zip archives by their
signature, images with `planktonzilla.images.probe` (which also fully decodes them, so a
truncated or corrupt image is caught here, not in the model). Archives are vetted from their
central directory before any member is inflated: a member path that is absolute or climbs
out (`../`), a link, too many members or a suspicious expansion (total size or ratio) rejects
the whole archive, since such a file is malformed or hostile rather than a slip.

    images, errors = expand([("a.png", png_bytes), ("run.zip", zip_bytes)], Limits())
"""

from __future__ import annotations

import io
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from planktonzilla.exceptions import PlanktonzillaError
from planktonzilla.fileio import zip_member_problem
from planktonzilla.images import ImageRejected, probe
from planktonzilla.readers.folder import JUNK_DIRS, is_junk

#: What a bad file's error code answers with (HTTP status). Codes of `planktonzilla.images`
#: (empty, corrupt, truncated, unsupported_format, decompression_bomb, too_large) and ours.
STATUS = {
    "bad_request": 400,
    "bad_host": 400,
    "invalid_parameter": 400,
    "no_files": 400,
    "bad_multipart": 400,
    "unsafe_path": 400,
    "unsafe_member": 400,
    "nested_too_deep": 400,
    "not_found": 404,
    "request_too_large": 413,
    "too_many_files": 413,
    "too_many_members": 413,
    "too_large": 413,
    "decompression_bomb": 413,
    "zip_bomb": 413,
    "unsupported_format": 415,
    "unsupported_media_type": 415,
    "encrypted_member": 415,
    "empty": 422,
    "corrupt": 422,
    "truncated": 422,
    "corrupt_archive": 422,
}
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server. Defaults suit plankton vignettes (tens of kB
    each) with ample headroom; they exist to stop abuse, not to shape normal use."""

    max_request_bytes: int = 50 * 1024 * 1024  # the whole multipart body
    max_files: int = 500  # images per request, archive members included
    max_pixels: int = 40_000_000  # per image, checked on the header before decoding
    max_zip_members: int = 2000  # entries in one archive's directory
    max_zip_bytes: int = 200 * 1024 * 1024  # uncompressed size of all archives in a request
    max_zip_ratio: float = 100.0  # uncompressed / compressed, per member over 1 MiB
    max_zip_depth: int = 2  # an archive inside an archive, no deeper


class UploadError(PlanktonzillaError):
    """A refused file or request: `code` is machine-readable, `status` its HTTP status."""

    def __init__(self, code: str, message: str, file: str | None = None, status: int = 0):
        super().__init__(message)
        self.code, self.message, self.file = code, message, file
        self.status = status or STATUS.get(code, 400)
        self.errors: list[UploadError] = []  # every file's error when all files failed

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message, "file": self.file}


@dataclass(frozen=True, slots=True)
class CheckedImage:
    """One checked image: `name` is the upload's file name (`archive.zip/member` inside an
    archive), `width` × `height` its size."""

    name: str
    data: bytes
    format: str
    width: int
    height: int


class _Budget:
    """What is left of the request's limits while its files are expanded."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.files = limits.max_files
        self.zip_bytes = limits.max_zip_bytes

    def take_file(self, name: str) -> None:
        self.files -= 1
        if self.files < 0:
            raise UploadError(
                "too_many_files",
                f"more than {self.limits.max_files} images in one request (archive members "
                "count); send them in several requests",
                name,
            )


def expand(
    files: Iterable[tuple[str, bytes]], limits: Limits
) -> tuple[list[CheckedImage], list[UploadError]]:
    """Checked images and per-file errors of an upload, in upload order. Raises `UploadError`
    for what condemns the whole request (more images than `limits.max_files`)."""
    budget = _Budget(limits)
    images: list[CheckedImage] = []
    errors: list[UploadError] = []
    for name, data in files:
        _add(name, data, 0, budget, images, errors)
    return images, errors


def _add(
    name: str,
    data: bytes,
    depth: int,
    budget: _Budget,
    images: list[CheckedImage],
    errors: list[UploadError],
) -> None:
    if data.startswith(ZIP_MAGIC):
        if depth >= budget.limits.max_zip_depth:
            errors.append(
                UploadError(
                    "nested_too_deep",
                    f"archives nested more than {budget.limits.max_zip_depth} deep are refused",
                    name,
                )
            )
            return
        try:
            _expand_zip(name, data, depth + 1, budget, images, errors)
        except UploadError as exc:
            if exc.code == "too_many_files":
                raise
            errors.append(exc)
        return
    budget.take_file(name)
    try:
        # no name: the bytes alone decide whether this is an image (and which error it gets)
        info = probe(
            data, max_bytes=budget.limits.max_request_bytes, max_pixels=budget.limits.max_pixels
        )
    except ImageRejected as exc:
        errors.append(UploadError(exc.reason, exc.message, name))
        return
    images.append(CheckedImage(name, data, info.format, info.width, info.height))


def _expand_zip(
    name: str,
    data: bytes,
    depth: int,
    budget: _Budget,
    images: list[CheckedImage],
    errors: list[UploadError],
) -> None:
    limits = budget.limits
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise UploadError("corrupt_archive", f"not a readable zip archive: {exc}", name) from None
    with archive:
        infos = archive.infolist()
        if len(infos) > limits.max_zip_members:
            raise UploadError(
                "too_many_members",
                f"{len(infos):,} archive entries is over the {limits.max_zip_members:,} limit",
                name,
            )
        for info in infos:
            problem = zip_member_problem(info)
            if problem:
                raise UploadError(*problem, name)
        declared = sum(info.file_size for info in infos)
        if declared > budget.zip_bytes:
            raise UploadError(
                "zip_bomb",
                f"expands to {declared:,} bytes, over the {limits.max_zip_bytes:,}-byte limit "
                "for archives in one request",
                name,
            )
        for info in infos:
            ratio = info.file_size / max(info.compress_size, 1)
            if info.file_size > 1 << 20 and ratio > limits.max_zip_ratio:
                raise UploadError(
                    "zip_bomb",
                    f"member {info.filename!r} expands {ratio:,.0f}-fold (limit "
                    f"{limits.max_zip_ratio:g})",
                    name,
                )
        budget.zip_bytes -= declared
        for info in infos:
            parts = info.filename.split("/")
            if info.is_dir() or is_junk(parts[-1]) or JUNK_DIRS.intersection(parts[:-1]):
                continue
            member = f"{name}/{info.filename}"
            if info.flag_bits & 0x1:
                errors.append(UploadError("encrypted_member", "encrypted members", member))
                continue
            try:
                # zipfile stops at the declared size and checks the CRC: the bytes read are
                # bounded by the directory we vetted above
                content = archive.read(info)
            except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as exc:
                errors.append(UploadError("corrupt_archive", f"unreadable member: {exc}", member))
                continue
            except NotImplementedError as exc:  # compression method zipfile lacks
                errors.append(UploadError("unsupported_format", str(exc), member))
                continue
            _add(member, content, depth, budget, images, errors)
