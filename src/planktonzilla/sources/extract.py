"""Safe extraction of zip, tar, tar.gz/bz2/xz archives, and of archives nested in them.

Every member is checked before a byte is written, by the one archive-member rule
(`planktonzilla.fileio.member_problem`: no absolute paths, no `..`, no links, no devices; odd
permission bits are fine), and against limits on the number of members and on the bytes
actually written (a lying header cannot get past the byte limit).
Extraction happens in a temporary sibling folder renamed into place only when complete, so a
truncated or hostile archive never leaves a half-extracted tree that looks usable.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from planktonzilla.exceptions import ExtractError, UnsafeArchiveError
from planktonzilla.fileio import (
    MAX_RATIO,
    RATIO_FLOOR,
    safe_member_path,
    tar_member_problem,
    zip_member_problem,
)

DEFAULT_MAX_BYTES = 4 << 40  # 4 TiB
DEFAULT_MAX_MEMBERS = 50_000_000
MAX_NESTING = 4
_COPY = 1 << 20


@dataclass
class _Budget:
    max_bytes: int
    max_members: int
    bytes: int = 0
    members: int = 0
    archives: list[str] = field(default_factory=list)
    archive_bytes: int = 0  # written from the archive being extracted
    archive_cap: int = 0  # what it may expand to (`MAX_RATIO` times its size)

    def start(self, archive: Path) -> None:
        self.archive_bytes = 0
        self.archive_cap = max(RATIO_FLOOR, MAX_RATIO * archive.stat().st_size)

    def member(self, name: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ExtractError(f"more than {self.max_members:,} members (at {name!r}); refusing")

    def add(self, n: int, name: str) -> None:
        self.bytes += n
        self.archive_bytes += n
        if self.archive_bytes > self.archive_cap:
            raise ExtractError(
                f"{self.archives[-1]} expands past {MAX_RATIO}:1 of its size (at {name!r}); "
                "refusing (a decompression bomb)"
            )
        if self.bytes > self.max_bytes:
            raise ExtractError(
                f"extracted size passes the limit of {self.max_bytes:,} bytes (at {name!r}); "
                "refusing (a decompression bomb, or raise the limit)"
            )


def archive_kind(path: Path) -> str | None:
    """'zip', 'tar' (any compression) or None, by content (not by name)."""
    path = Path(path)
    if not path.is_file():
        return None
    if zipfile.is_zipfile(path):
        return "zip"
    try:
        if tarfile.is_tarfile(path):
            return "tar"
    except (OSError, EOFError, tarfile.TarError):
        pass
    name = path.name.lower()
    if name.endswith((".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        return "broken"  # named like an archive, but neither reader accepts it
    return None


def extract(
    archive: Path,
    dest: Path,
    *,
    nested: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_members: int = DEFAULT_MAX_MEMBERS,
) -> Path:
    """Extract `archive` into the folder `dest` (which must not exist yet) and return it.

    With `nested`, archives found inside are extracted in turn into a folder named after
    them (without extension), and removed; the limits count everything extracted. On any
    error nothing is left at `dest`.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise ExtractError(f"{dest} already exists")
    tmp = dest.with_name(f".{dest.name}.extracting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    budget = _Budget(max_bytes, max_members)
    try:
        _extract_one(archive, tmp, budget)
        if nested:
            _extract_nested(tmp, budget, depth=1)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    os.replace(tmp, dest)
    return dest


def _extract_nested(root: Path, budget: _Budget, depth: int) -> None:
    found = [
        p
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.startswith("._") and archive_kind(p) in ("zip", "tar")
    ]
    if found and depth > MAX_NESTING:
        raise ExtractError(f"archives nested deeper than {MAX_NESTING} levels")
    for inner in found:
        target = inner.with_name(_strip_archive_ext(inner.name))
        if target.exists():
            target = inner.with_name(inner.name + ".d")
        target.mkdir()
        _extract_one(inner, target, budget)
        inner.unlink()
        _extract_nested(target, budget, depth + 1)


def _strip_archive_ext(name: str) -> str:
    lower = name.lower()
    for ext in (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".zip", ".tar"):
        if lower.endswith(ext):
            return name[: -len(ext)] or name
    return name


def _extract_one(archive: Path, dest: Path, budget: _Budget) -> None:
    kind = archive_kind(archive)
    budget.archives.append(archive.name)
    budget.start(archive)
    try:
        if kind == "zip":
            _extract_zip(archive, dest, budget)
        elif kind == "tar":
            _extract_tar(archive, dest, budget)
        elif kind == "broken":
            raise ExtractError(f"{archive.name}: truncated or corrupt archive (unreadable header)")
        else:
            raise ExtractError(f"{archive.name}: not a zip or tar archive")
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        if isinstance(exc, OSError) and not isinstance(exc, EOFError) and exc.errno is not None:
            raise  # disk full, permissions…: not the archive's fault
        raise ExtractError(f"{archive.name}: truncated or corrupt archive ({exc})") from exc
    except ValueError as exc:  # zlib/lzma errors inside tarfile streams
        raise ExtractError(f"{archive.name}: corrupt archive ({exc})") from exc


def _write(src, out: Path, expected: int | None, budget: _Budget, name: str) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(out, "wb") as fh:
        while block := src.read(_COPY):
            budget.add(len(block), name)
            n += len(block)
            fh.write(block)
    if expected is not None and n != expected:
        raise ExtractError(f"member {name!r}: {n:,} of {expected:,} bytes (truncated archive)")


def _checked(problem: tuple[str, str] | None) -> None:
    if problem:
        raise UnsafeArchiveError(problem[1])


def _extract_zip(archive: Path, dest: Path, budget: _Budget) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        for info in infos:  # check everything first: a hostile member stops it all
            _checked(zip_member_problem(info))
        for info in infos:
            budget.member(info.filename)
            rel = safe_member_path(info.filename)
            if info.is_dir() or str(rel) == ".":
                (dest / rel).mkdir(parents=True, exist_ok=True)
            else:
                with zf.open(info) as src:
                    _write(src, dest / rel, info.file_size, budget, info.filename)


def _extract_tar(archive: Path, dest: Path, budget: _Budget) -> None:
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:  # streaming: members are checked as they come, before they are written
            budget.member(m.name)
            _checked(tar_member_problem(m))
            rel = safe_member_path(m.name)
            if m.isdir():
                (dest / rel).mkdir(parents=True, exist_ok=True)
            else:
                _write(tf.extractfile(m), dest / rel, m.size, budget, m.name)
