"""File helpers every layer shares: atomic writes, content hashes, and the one rule that decides
whether an archive member (zip or tar) may be read or extracted.

Atomic writes go to a temporary sibling, are flushed to disk (fsync), renamed over the target
and the folder entry is flushed too, so a crash or a power cut leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO

from planktonzilla.exceptions import UnsafeArchiveError

__all__ = [
    "MAX_RATIO",
    "RATIO_FLOOR",
    "atomic_path",
    "atomic_write",
    "atomic_writer",
    "commit_file",
    "gunzip_at_most",
    "member_problem",
    "read_at_most",
    "read_member",
    "read_regular_file",
    "RefusedInput",
    "safe_member_path",
    "sha256_bytes",
    "sha256_file",
    "tar_member_problem",
    "zip_member_problem",
]

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

#: Largest expansion (declared size / compressed size) of an archive member or gzip stream
#: that is read. Images barely compress and tables about 10:1; bombs reach 1,000:1 and more.
#: Members under `RATIO_FLOOR` are exempt (tiny files of zeros compress that well honestly).
MAX_RATIO = 200
RATIO_FLOOR = 1 << 20


# ------------------------------------------------------------------ atomic writes
def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_file(tmp: str | os.PathLike, dest: str | os.PathLike) -> None:
    """Flush the finished file `tmp` to disk and rename it over `dest` (same folder)."""
    tmp, dest = Path(tmp), Path(dest)
    if tmp.is_file():
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def _tmp_name(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.{os.getpid()}.tmp")


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", **open_kwargs) -> Iterator[IO]:
    """`with atomic_writer(p, "w") as fh: ...` — `p` appears whole when the block ends, or not
    at all when it raises."""
    dest = Path(path)
    tmp = _tmp_name(dest)
    try:
        with open(tmp, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
        _fsync_dir(dest.parent)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes | str) -> None:
    """Write `data` (text is UTF-8) to `path` atomically."""
    with atomic_writer(path, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary sibling path for writers that take a file name (Parquet, safetensors):
    `with atomic_path(p) as tmp: save(tmp)` commits `tmp` to `p` when the block ends."""
    dest = Path(path)
    tmp = _tmp_name(dest)
    try:
        yield tmp
        commit_file(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------ bounded reads
class RefusedInput(OSError):
    """An input refused before (or while) reading it: `reason` is the rejection code
    (`too_large`, `too_compressed`, `not_regular`), `message` says why."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


def read_at_most(fh: IO[bytes], limit: int, what: str) -> bytes:
    """Everything `fh` holds, or `RefusedInput('too_large')` once it passes `limit` bytes
    (the read stops there: a stream that lies about its size costs `limit` bytes, no more)."""
    chunks, total = [], 0
    while chunk := fh.read(min(_CHUNK, limit + 1 - total)):
        chunks.append(chunk)
        total += len(chunk)
        if total > limit:
            raise RefusedInput("too_large", f"{what} holds more than the {limit:,}-byte limit")
    return b"".join(chunks)


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file `path` (links followed) when it holds at most `limit`;
    `RefusedInput` for anything else: a FIFO, device or socket is refused without reading
    (a FIFO would block, `/dev/zero` never ends), a file over `limit` by its size."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO never waits
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RefusedInput("not_regular", f"{path} is not a regular file")
        if st.st_size > limit:
            raise RefusedInput(
                "too_large", f"{path}: {st.st_size:,} bytes is over the {limit:,}-byte limit"
            )
        with os.fdopen(fd, "rb", closefd=False) as fh:
            data = fh.read(st.st_size)  # one allocation: the size is known
            more = read_at_most(fh, limit - len(data), str(path))  # b"" unless it grew
            return data + more if more else data
    finally:
        os.close(fd)


def read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo | str, limit: int) -> bytes:
    """A zip member's bytes, checked before reading by its declared size and compression
    ratio (`MAX_RATIO`) and read with `limit` as a cap (declared sizes can lie)."""
    if isinstance(info, str):
        info = zf.getinfo(info)
    name = info.filename
    if info.file_size > limit:
        raise RefusedInput(
            "too_large", f"member {name!r} declares {info.file_size:,} bytes, over {limit:,}"
        )
    if info.file_size > RATIO_FLOOR and info.file_size > MAX_RATIO * max(info.compress_size, 1):
        raise RefusedInput(
            "too_compressed",
            f"member {name!r} expands {info.file_size / max(info.compress_size, 1):,.0f}:1, "
            f"over the {MAX_RATIO}:1 limit (a zip bomb?)",
        )
    with zf.open(info) as fh:
        return read_at_most(fh, limit, f"member {name!r}")


def gunzip_at_most(data: bytes, limit: int, what: str) -> bytes:
    """Decompress gzip `data`, refusing output over `limit` or expanding past `MAX_RATIO`."""
    cap = min(limit, max(RATIO_FLOOR, len(data) * MAX_RATIO))
    with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
        try:
            return read_at_most(fh, cap, f"{what} (decompressed)")
        except RefusedInput as exc:
            if cap < limit:
                exc.reason = "too_compressed"
                exc.message += f" (over the {MAX_RATIO}:1 expansion limit: a gzip bomb?)"
            raise


# ------------------------------------------------------------------------ hashes
def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------- archive members
def member_problem(
    name: str, *, link: bool = False, special: bool = False
) -> tuple[str, str] | None:
    """The one archive-member rule: `(code, reason)` when a member must not be read or
    extracted, else None. Refused: absolute paths and drive letters, `..` components, NUL
    bytes (`unsafe_path`); links, devices, FIFOs (`unsafe_member`). Backslashes count as
    separators (zips made on Windows). Permission bits do not matter."""
    raw = name.replace("\\", "/")
    if raw.startswith("/") or _DRIVE.match(raw):
        return "unsafe_path", f"member {name!r} has an absolute path"
    if ".." in raw.split("/"):
        return "unsafe_path", f"member {name!r} escapes the archive ('..')"
    if "\x00" in raw:
        return "unsafe_path", f"member {name!r} has a NUL byte in its name"
    if link:
        return "unsafe_member", f"member {name!r} is a link"
    if special:
        return "unsafe_member", f"member {name!r} is not a regular file or folder"
    return None


def zip_member_problem(info: zipfile.ZipInfo) -> tuple[str, str] | None:
    """`member_problem` for a zip member (its Unix file type, when the archiver recorded one)."""
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0: no Unix type recorded -> regular
    return member_problem(
        info.filename,
        link=kind == stat.S_IFLNK,
        special=bool(kind) and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK),
    )


def tar_member_problem(info: tarfile.TarInfo) -> tuple[str, str] | None:
    """`member_problem` for a tar member."""
    return member_problem(
        info.name,
        link=info.issym() or info.islnk(),
        special=not (info.isreg() or info.isdir() or info.issym() or info.islnk()),
    )


def safe_member_path(name: str) -> PurePosixPath:
    """The relative path a member name may be written to, or `UnsafeArchiveError`."""
    problem = member_problem(name)
    if problem:
        raise UnsafeArchiveError(problem[1])
    parts = [p for p in name.replace("\\", "/").split("/") if p not in ("", ".")]
    return PurePosixPath(*parts) if parts else PurePosixPath(".")
