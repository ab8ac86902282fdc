"""What the web app shows of an object store: counts per source / instrument / taxon,
sampling locations, a few images per class, the latest evaluation report, and abundances per
sample x taxon (planktonzilla.ecology).

    browser = StoreBrowser("store")
    browser.stats()["taxa"][:3]
    data, media_type = browser.image(object_id, size=96)
"""

from __future__ import annotations

import io
import re
import threading
from pathlib import Path
from typing import Any

from planktonzilla.store import ObjectStore

SAMPLES_PER_CLASS = 4
SAMPLE_CLASSES = 48  # the most common classes get a row of sample images
MAX_LOCATIONS = 2000  # distinct (lat, lon) points drawn on the map
MAX_TAXA = 500
_OBJECT_ID = re.compile(r"^[0-9a-f]{16,128}$")
# Formats every browser displays as they are; anything else (TIFF) is re-encoded as PNG.
_WEB_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "bmp": "image/bmp"}


class StoreBrowser:
    """Read-only views of one store for the web app. Stats are cached per manifest hash, so
    they refresh when an ingest changes the store."""

    def __init__(self, path: str | Path):
        self.store = ObjectStore(path)
        if not self.store.path.is_dir():
            raise FileNotFoundError(f"no store at {self.store.path}")
        self._lock = threading.Lock()
        self._cached: tuple[str, dict[str, Any]] | None = None
        self._files: tuple[str, list[str]] | None = None
        self._abundance: dict[tuple, tuple[Any, bytes]] = {}

    def stats(self) -> dict[str, Any]:
        key = self.store.manifest_hash()
        with self._lock:
            cached = self._cached
        if cached is None or cached[0] != key:
            cached = (key, self._compute_stats())
            with self._lock:
                self._cached = cached
        report = self.latest_report()  # evaluations change without the manifest changing
        return {
            **cached[1],
            "report": None
            if report is None
            else {"url": "/report", "evaluation": report.parent.name},
        }

    def abundance(self, rank: str = "genus", unit: str = "L") -> tuple[Any, bytes]:
        """The store's abundance table (planktonzilla.ecology: its labels, its sample volumes)
        and its PNG plot, cached per manifest and sample tables."""
        from planktonzilla.ecology.abundance import abundance
        from planktonzilla.ecology.plots import plot_png

        samples = sorted(
            (p.name, p.stat().st_mtime_ns) for p in self.store.layout.samples.glob("*.parquet")
        )
        key = (self.store.manifest_hash(), tuple(samples), rank, unit)
        with self._lock:
            cached = self._abundance.get(key)
        if cached is None:
            table = abundance(self.store, rank=rank, unit=unit)
            cached = (table, plot_png(table))
            with self._lock:
                self._abundance = {key: cached}  # the latest only: tables can be large
        return cached

    def _compute_stats(self) -> dict[str, Any]:
        con = self.store.connect()

        def rows(sql: str) -> list[dict[str, Any]]:
            return con.sql(sql).to_arrow_table().to_pylist()

        label = "coalesce(taxon, raw_label, '(unlabelled)')"
        try:
            totals = rows(
                "SELECT count(*) AS objects, count(DISTINCT source) AS sources,"
                f" count(DISTINCT {label}) AS classes,"
                " count(*) FILTER (WHERE lat IS NOT NULL AND lon IS NOT NULL) AS located"
                " FROM objects"
            )[0]
            sources = rows(
                "SELECT source, count(*) AS objects, count(DISTINCT raw_label) AS raw_labels"
                " FROM objects GROUP BY 1 ORDER BY 2 DESC, 1"
            )
            instruments = rows(
                "SELECT coalesce(instrument, '(none)') AS instrument, count(*) AS objects"
                " FROM objects GROUP BY 1 ORDER BY 2 DESC, 1"
            )
            taxa = rows(
                "SELECT coalesce(taxon, '(unresolved)') AS taxon, taxon_rank AS rank, phylum,"
                " root_class, count(*) AS objects FROM objects GROUP BY ALL"
                f" ORDER BY objects DESC, taxon LIMIT {MAX_TAXA}"
            )
            locations = rows(
                "SELECT round(lat, 2) AS lat, round(lon, 2) AS lon, count(*) AS objects"
                " FROM objects WHERE lat BETWEEN -90 AND 90 AND lon BETWEEN -180 AND 180"
                f" GROUP BY 1, 2 ORDER BY 3 DESC LIMIT {MAX_LOCATIONS}"
            )
            # object ids are content hashes: the first few by id are an unbiased sample
            samples = rows(
                f"WITH c AS (SELECT {label} AS label, count(*) AS objects FROM objects"
                " WHERE image_format IS NOT NULL GROUP BY 1"
                f" ORDER BY 2 DESC, 1 LIMIT {SAMPLE_CLASSES}),"
                f" s AS (SELECT {label} AS label, object_id, row_number() OVER"
                f" (PARTITION BY {label} ORDER BY object_id) AS n FROM objects"
                " WHERE image_format IS NOT NULL)"
                " SELECT c.label, c.objects, list(s.object_id ORDER BY s.object_id) AS object_ids"
                f" FROM c JOIN s USING (label) WHERE s.n <= {SAMPLES_PER_CLASS}"
                " GROUP BY c.label, c.objects ORDER BY c.objects DESC, c.label"
            )
        finally:
            con.close()
        return {
            "totals": totals,
            "sources": sources,
            "instruments": instruments,
            "taxa": taxa,
            "locations": locations,
            "samples": samples,
        }

    def image(self, object_id: str, size: int | None = None) -> tuple[bytes, str] | None:
        """(bytes, media type) of a stored image, as stored when browsers display its format,
        else (or when `size` asks for a thumbnail) re-encoded as PNG; None when unknown."""
        if not _OBJECT_ID.match(object_id):
            return None
        files = self._shard_files()
        if not files:
            return None
        import duckdb

        # A bare connection on the shards: the store's full views (taxonomy join) are not
        # needed to fetch bytes, and cost tens of ms per connection.
        con = duckdb.connect()
        try:
            found = con.execute(
                "SELECT image, image_format FROM read_parquet($files)"
                " WHERE object_id = $id AND image IS NOT NULL LIMIT 1",
                {"files": files, "id": object_id},
            ).fetchone()
        finally:
            con.close()
        if found is None:
            return None
        data, fmt = found
        if size is None and fmt in _WEB_FORMATS:
            return data, _WEB_FORMATS[fmt]
        return thumbnail_png(data, size or 100_000), "image/png"

    def _shard_files(self) -> list[str]:
        key = self.store.manifest_hash()
        cached = self._files
        if cached is not None and cached[0] == key:
            return cached[1]
        files = self.store.shard_files()
        self._files = (key, files)
        return files

    def latest_report(self) -> Path | None:
        """The newest `evaluations/*/report.html` (by modification time), if any."""
        found = self.store.layout.evaluations.glob("*/report.html")
        reports = [p for p in found if p.is_file()]
        return max(reports, key=lambda p: p.stat().st_mtime, default=None)


def thumbnail_png(data: bytes, size: int) -> bytes:
    """PNG of an encoded image scaled to fit `size` × `size` (never enlarged), in a mode
    browsers display (16-bit greyscale is stretched into 8 bits)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
        shown = _displayable(im)
        shown.thumbnail((size, size))
        out = io.BytesIO()
        shown.save(out, format="PNG")
    return out.getvalue()


def _displayable(im):
    from PIL import Image

    if im.mode in ("L", "RGB", "RGBA"):
        return im
    if im.mode.startswith("I") or im.mode == "F":
        import numpy as np

        a = np.asarray(im, dtype=np.float64)
        top = a.max() or 1.0
        return Image.fromarray((a * (255.0 / top)).clip(0, 255).astype(np.uint8), "L")
    return im.convert("RGBA" if "A" in im.getbands() or "transparency" in im.info else "RGB")
