"""What readers yield: one `Record` per image found, or one `Rejection` per input they could not
turn into an image. The store validates, hashes, de-duplicates and writes them; readers only read.

Every input a reader sees must come out as exactly one of the two, so that
read = stored + rejected holds for every ingest.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from planktonzilla.fileio import read_regular_file


@dataclass(frozen=True, slots=True)
class FileBytes:
    """A picklable, lazy reference to an image file, read only when the store needs it (so a
    resumed ingest does not re-read inputs it already accounted for)."""

    path: str | Path

    def __call__(self) -> bytes:
        return self.read_at_most(sys.maxsize)

    def read_at_most(self, limit: int) -> bytes:
        """The bytes, or `RefusedInput` for a file over `limit` or not a regular file."""
        return read_regular_file(self.path, limit)


@dataclass(slots=True)
class Record:
    """One image and what is known about it.

    `origin` identifies the input within its source (relative path, archive member, or
    `bin_id/roi_number`): it is the key that makes ingest resumable, so it must be stable
    across runs and unique within a source.
    `image` holds the original encoded bytes, or a picklable zero-argument callable returning
    them (e.g. `FileBytes`); the store never re-encodes them. `None` marks a metadata-only
    object (e.g. an EcoPart export without vignettes): its id is then derived from
    `source_object_id`, which must be set.
    """

    origin: str
    image: bytes | Callable[[], bytes] | None
    source_object_id: str | None = None
    raw_label: str | None = None
    instrument: str | None = None
    pixel_size_um: float | None = None
    lat: float | None = None
    lon: float | None = None
    depth_min: float | None = None
    depth_max: float | None = None
    time_utc: datetime | None = None  # timezone-aware, UTC
    sample_id: str | None = None
    license: str | None = None
    license_url: str | None = None
    # Anything else worth keeping (JSON-serialisable). Reserved key: "upstream_split"
    # ("train" | "val" | "test") for a collection's own split.
    extra: dict[str, Any] = field(default_factory=dict)

    def image_bytes(self) -> bytes | None:
        if self.image is None or isinstance(self.image, bytes | bytearray):
            return self.image
        return self.image()


@dataclass(slots=True)
class Rejection:
    """An input that will not be stored, with a machine-readable `reason` (e.g. `corrupt`,
    `truncated`, `empty`, `too_large`, `unsupported_format`, `missing_file`, `invalid_bin`,
    `bad_row`) and a `message` a person can act on."""

    origin: str
    reason: str
    message: str
    source_object_id: str | None = None
    raw_label: str | None = None


#: Metadata fields a `Record` carries that the caller of an ingest may default.
DEFAULTABLE = ("instrument", "pixel_size_um", "license", "license_url")
