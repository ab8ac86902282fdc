"""Where everything lives in a store directory. The one place that spells a sub-directory or
parses `manifest.json`:

    store/
      manifest.json                         written last, atomically
      .lock                                 the one-writer lock
      ingest.journal.json                   shards an ingest wrote, not yet in the manifest
      objects/<source>/part-NNNNN.parquet   immutable shards
      rejected/<source>/part-NNNNN.parquet  inputs not stored, with their reasons
      taxonomy/<source>.parquet             lineages of a user's own labels (joined at read time)
      splits/<name>.parquet                 object id -> train / val / test
      metadata/<source>.parquet             object id -> lat/lon/depth/time fetched after ingest
                                            (`pz enrich`; joined at read time, shard wins)
      samples/<source>.parquet              sampled volume per sample (joined at read time)
      evaluations/<run>/                    results.json, report.md, report.html
      cache/<kind>/<key>/                   derived data (e.g. cached features)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from planktonzilla.exceptions import StoreError

__all__ = ["MANIFEST", "StoreLayout", "is_store", "read_manifest"]

MANIFEST = "manifest.json"


def read_manifest(root: str | os.PathLike) -> dict | None:
    """The manifest of the store at `root`; None when there is none (a new store);
    `StoreError` when it exists but is not a manifest."""
    path = Path(root) / MANIFEST
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StoreError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise StoreError(f"{path} is not valid JSON ({exc}): the store is damaged") from exc
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sources"), dict):
        raise StoreError(f"{path} is not a planktonzilla manifest (no 'sources')")
    return manifest


def is_store(path: str | os.PathLike) -> bool:
    """True for a folder holding a readable planktonzilla manifest."""
    try:
        return read_manifest(path) is not None
    except StoreError:
        return False


@dataclass(frozen=True)
class StoreLayout:
    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def journal(self) -> Path:
        return self.root / "ingest.journal.json"

    def shard_dir(self, kind: str, source: str) -> Path:
        """`objects/<source>` or `rejected/<source>`."""
        if kind not in ("objects", "rejected"):
            raise ValueError(f"unknown shard kind {kind!r}")
        return self.root / kind / source

    @property
    def taxonomy(self) -> Path:
        return self.root / "taxonomy"

    def source_taxonomy(self, source: str) -> Path:
        return self.taxonomy / f"{source}.parquet"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    def split(self, name: str) -> Path:
        return self.splits / f"{name}.parquet"

    @property
    def samples(self) -> Path:
        return self.root / "samples"

    def source_samples(self, source: str) -> Path:
        """`samples/<source>.parquet`: the sample table of one source (planktonzilla.ecology)."""
        return self.samples / f"{source}.parquet"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"

    def source_metadata(self, source: str) -> Path:
        """`metadata/<source>.parquet`: one row per object_id (the content hash)."""
        return self.metadata / f"{source}.parquet"

    @property
    def evaluations(self) -> Path:
        return self.root / "evaluations"

    def cache(self, kind: str) -> Path:
        return self.root / "cache" / kind
