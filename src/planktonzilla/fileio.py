"""File helpers every layer shares: atomic writes, content hashes, and the one rule that decides
whether an archive member (zip or tar) may be read or extracted.

Atomic writes go to a temporary sibling, are flushed to disk (fsync), renamed over the target
and the folder entry is flushed too, so a crash or a power cut leaves either the old file or
the new one, never a torn one.
"""

from __future__ import annotations

import contextlib
import hashlib
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
    "atomic_write",
    "atomic_writer",
    "commit_file",
    "member_problem",
    "safe_member_path",
    "sha256_bytes",
    "sha256_file",
    "tar_member_problem",
    "zip_member_problem",
]

_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")


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
