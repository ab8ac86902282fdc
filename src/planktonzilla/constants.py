"""Names shared by every layer: taxonomic ranks, split sides, image suffixes, cache places."""

from __future__ import annotations

import os
from pathlib import Path

#: The seven Linnaean ranks of a lineage, top down.
RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

#: The sides of a split.
SIDES = ("train", "val", "test")

#: Folder or file-name words that name a split side in upstream layouts.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}

#: File suffixes read as images (first frame of GIF / TIFF).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif"})

#: Longest raw label an ingest accepts: a longer one is rejected as `bad_label` (real labels,
#: EcoTaxa hierarchies included, stay under 300 characters). `ingest(max_label_chars=…)`.
MAX_LABEL_CHARS = 1_000

#: Environment variable of the download / extraction cache of the public collections.
CACHE_ENV = "PZ_CACHE"


def cache_dir() -> Path:
    """Where downloads and extracted trees go: `$PZ_CACHE`, else ~/.cache/planktonzilla."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "planktonzilla"
