"""`pz verify`: check a store against its manifest, as trusted stores check themselves.

Checked always: the manifest parses; every shard it lists exists, has the listed size and
sha256 (a flipped byte anywhere in a shard, footer included, or a stale checksum shows here)
and a readable Parquet footer with the listed row count; no file in `objects/` or `rejected/`
is unlisted (a foreign part file, or a shard of an interrupted ingest awaiting its rerun).
With `deep`, every image is hashed again against its object id (the id *is* the sha256 of
the image bytes; a metadata-only object's id is the sha256 of `source NUL source_object_id`),
so the faulty objects are named. Time is linear in the store's size: one read of each byte.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from planktonzilla.exceptions import StoreError
from planktonzilla.fileio import sha256_file
from planktonzilla.store.layout import StoreLayout, read_manifest
from planktonzilla.store.objectstore import ObjectStore

__all__ = ["Problem", "VerifyReport", "verify_store"]

_KINDS = (("objects", "shards"), ("rejected", "rejected_shards"))


@dataclass(frozen=True)
class Problem:
    """One finding: `kind` is `manifest`, `journal`, `missing`, `size`, `checksum`, `footer`,
    `rows`, `foreign`, `unlisted` or `image`; `path` the file (relative to the store)."""

    kind: str
    path: str
    message: str


@dataclass
class VerifyReport:
    shards: int = 0
    bytes: int = 0
    objects_hashed: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_store(path: str | os.PathLike, *, deep: bool = False) -> VerifyReport:
    """Check the store at `path` (see the module doc); problems are collected, not raised."""
    root = Path(path)
    layout = StoreLayout(root)
    report = VerifyReport()
    try:
        manifest = read_manifest(root)
    except StoreError as exc:
        report.problems.append(Problem("manifest", "manifest.json", str(exc)))
        manifest = None
    if manifest is None and not report.problems:
        if not any(_part_files(root)):
            return report  # an empty (or new) store
        report.problems.append(Problem("manifest", "manifest.json", "missing"))
    listed: set[str] = set()
    for entry in (manifest or {}).get("sources", {}).values():
        for kind, key in _KINDS:
            for shard in entry.get(key, []):
                listed.add(shard["path"])
                report.shards += 1
                report.problems.extend(
                    _check_shard(root, shard, deep and kind == "objects", report)
                )
    try:  # the journal's own parser (the store package owns its format)
        journalled = set(ObjectStore(root)._journal())
    except StoreError as exc:
        report.problems.append(Problem("journal", layout.journal.name, str(exc)))
        journalled = set()
    for rel in _part_files(root):
        if rel in listed:
            continue
        if rel in journalled:
            report.problems.append(
                Problem("unlisted", rel, "written by an interrupted ingest: rerun it to list it")
            )
        else:
            report.problems.append(
                Problem("foreign", rel, "not written by this store (never read): remove it")
            )
    return report


def _part_files(root: Path) -> Iterator[str]:
    for kind, _ in _KINDS:
        base = root / kind
        if base.is_dir():
            for p in sorted(base.glob("*/*")):
                if not p.name.endswith(".tmp"):  # debris of a killed write, removed on ingest
                    yield p.relative_to(root).as_posix()


def _check_shard(root: Path, shard: dict, deep: bool, report: VerifyReport) -> list[Problem]:
    import pyarrow.parquet as pq

    rel = shard["path"]
    path = root / rel
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [Problem("missing", rel, "listed in the manifest but not on disk")]
    report.bytes += size
    problems = []
    if size != shard["bytes"]:
        problems.append(
            Problem("size", rel, f"{size:,} bytes, the manifest lists {shard['bytes']:,}")
        )
    digest = sha256_file(path)
    if digest != shard["sha256"]:
        problems.append(
            Problem(
                "checksum",
                rel,
                f"sha256 {digest[:12]}… differs from the manifest's "
                f"{shard['sha256'][:12]}…: the shard changed after it was listed",
            )
        )
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # noqa: BLE001 - any failure to open the footer is the finding
        problems.append(Problem("footer", rel, f"unreadable Parquet footer ({exc})"))
        return problems
    rows = parquet.metadata.num_rows
    if rows != shard["rows"]:
        problems.append(
            Problem("rows", rel, f"{rows:,} rows, the manifest lists {shard['rows']:,}")
        )
    if deep:
        problems.extend(_check_images(parquet, rel, report))
    return problems


def _check_images(parquet, rel: str, report: VerifyReport) -> Iterator[Problem]:
    columns = ["object_id", "source", "source_object_id", "image"]
    try:
        for batch in parquet.iter_batches(batch_size=256, columns=columns):
            for oid, source, source_oid, image in zip(
                *(batch.column(c).to_pylist() for c in columns), strict=True
            ):
                if image is None:
                    actual = hashlib.sha256(f"{source}\0{source_oid}".encode()).hexdigest()
                else:
                    actual = hashlib.sha256(image).hexdigest()
                report.objects_hashed += 1
                if actual != oid:
                    yield Problem(
                        "image", rel, f"object {oid}: its bytes hash to {actual[:12]}… (corrupt)"
                    )
    except Exception as exc:  # noqa: BLE001 - a page that does not decode is the finding
        yield Problem("image", rel, f"image pages unreadable ({exc})")
