"""From a collection's download (or a copy the user already has) to records in a store.

`prepare` fetches and safely extracts (or takes `--from` a local archive or folder);
`plan` applies the collection's layout rule to the tree and reads its split lists / tables and
object tables in bulk, before anything is written; `collection_records` yields the records,
stamped with the collection's licence, instrument, citation and fixed-site metadata; and
`ingest_source` runs the lot into an `ObjectStore`. Every network or archive failure happens in
`prepare`/`plan`, so a failed fetch never leaves a partial store.
"""

from __future__ import annotations

import csv
import fnmatch
import gzip
import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from planktonzilla.constants import cache_dir
from planktonzilla.exceptions import SourceError
from planktonzilla.sources.registry import Collection, get

if TYPE_CHECKING:
    import httpx

    from planktonzilla.records import Record, Rejection
    from planktonzilla.store import IngestReport

ARCHIVE_EXTS = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".gif", ".webp"})
SPLIT_VALUES = {
    "train": "train",
    "training": "train",
    "learning": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_SPLIT_NAMES = frozenset(SPLIT_VALUES)


# --- where things go ----------------------------------------------------------------------


def _file_name(url: str) -> str:
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    return name or "download"


def download_targets(c: Collection, mirror: str | None = None) -> list[tuple[str, str]]:
    """(url, file name) for each file to download. `mirror` replaces the hosts with
    `<mirror>/<collection id>/<file name>` (an institutional copy, or a test server)."""
    if c.download.kind == "fairdata":
        name = f"{c.download.dataset}.zip"
        return [(f"{mirror.rstrip('/')}/{c.id}/{name}" if mirror else "", name)]
    out = []
    for url in c.download.urls:
        name = _file_name(url)
        out.append((f"{mirror.rstrip('/')}/{c.id}/{name}" if mirror else url, name))
    return out


def fetch(
    c: Collection | str,
    dest: Path | None = None,
    *,
    mirror: str | None = None,
    client: httpx.Client | None = None,
    fairdata_url: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    poll_interval: float = 5.0,
) -> list[Path]:
    """Download the collection's archive(s) into `dest` (default: the cache) and return their
    paths. Raises `DownloadError` (clear message) or `SourceError` (manual download)."""
    from planktonzilla.sources import download as dl

    c = get(c) if isinstance(c, str) else c
    dest = Path(dest) if dest else cache_dir() / "sources" / c.id / "downloads"
    if c.download.kind == "manual" and not mirror:
        raise SourceError(
            f"{c.id}: {c.download.urls[0]} is a web page a person must visit; download the "
            f"archive there and run again with --from PATH"
        )
    single = len(c.download.urls) <= 1
    paths = []
    for url, name in download_targets(c, mirror):
        if c.download.kind == "fairdata" and not mirror:
            paths.append(
                dl.fairdata_download(
                    c.download.dataset,
                    dest / name,
                    base_url=fairdata_url,
                    size=c.download.size,
                    client=client,
                    retries=retries,
                    backoff=backoff,
                    poll_interval=poll_interval,
                )
            )
        else:
            paths.append(
                dl.download(
                    url,
                    dest / name,
                    size=c.download.size if single else None,
                    sha256=c.download.sha256 if single else None,
                    client=client,
                    retries=retries,
                    backoff=backoff,
                )
            )
    return paths


def extract_all(archives: list[Path], into: Path, **limits) -> Path:
    """Extract each archive into `into/<archive stem>` (reusing complete earlier extractions);
    return `into`."""
    from planktonzilla.sources.extract import extract

    into.mkdir(parents=True, exist_ok=True)
    for archive in archives:
        stem = archive.name
        for ext in ARCHIVE_EXTS:
            if stem.lower().endswith(ext):
                stem = stem[: -len(ext)]
                break
        target = into / stem
        marker = into / f".{stem}.extracted.json"
        made_from = {"archive": archive.name, "size": archive.stat().st_size}
        if target.is_dir() and marker.is_file() and json.loads(marker.read_text()) == made_from:
            continue  # extracted earlier from this very archive
        if target.is_dir():
            shutil.rmtree(target)  # from another archive, or unfinished bookkeeping
        extract(archive, target, **limits)
        marker.write_text(json.dumps(made_from))
    return into


def _is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_EXTS)


def prepare(
    c: Collection | str,
    *,
    from_path: Path | list[Path] | None = None,
    cache: Path | None = None,
    mirror: str | None = None,
    client: httpx.Client | None = None,
    fairdata_url: str | None = None,
    retries: int = 5,
    backoff: float = 1.0,
    poll_interval: float = 5.0,
    max_bytes: int | None = None,
    max_members: int | None = None,
) -> Path:
    """A folder holding the collection's tree: `from_path` itself when it is a folder with the
    collection's layout; else its archives (a file, a list of files, the archives in the
    folder, or the downloaded ones) safely extracted into the cache."""
    c = get(c) if isinstance(c, str) else c
    base = (Path(cache) if cache else cache_dir()) / "sources" / c.id
    limits = {k: v for k, v in (("max_bytes", max_bytes), ("max_members", max_members)) if v}
    if isinstance(from_path, list | tuple):
        missing = [str(p) for p in from_path if not Path(p).is_file()]
        if missing:
            raise SourceError(f"not found: {', '.join(missing)}")
        return extract_all([Path(p) for p in from_path], base / "extracted", **limits)
    if from_path is not None:
        from_path = Path(from_path)
        if not from_path.exists():
            raise SourceError(f"{from_path} does not exist")
        if from_path.is_file():
            return extract_all([from_path], base / "extracted", **limits)
        archives = sorted(p for p in from_path.iterdir() if _is_archive(p))
        if archives and not _resolve_roots(c, from_path):
            return extract_all(archives, base / "extracted", **limits)
        return from_path
    archives = fetch(
        c,
        base / "downloads",
        mirror=mirror,
        client=client,
        fairdata_url=fairdata_url,
        retries=retries,
        backoff=backoff,
        poll_interval=poll_interval,
    )
    return extract_all(archives, base / "extracted", **limits)


# --- layout rules ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClassRoot:
    """A folder whose sub-folders are classes; images sit in `<class>/<suffix>/`."""

    path: Path
    suffix: tuple[str, ...] = ()
    split: str | None = None


def _listdir(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted(it, key=lambda e: e.name)
    except OSError:
        return []


def _junk(name: str, skip: tuple[str, ...] = ()) -> bool:
    from planktonzilla.readers.folder import JUNK_DIRS, is_junk

    return is_junk(name) or name in JUNK_DIRS or any(fnmatch.fnmatch(name, p) for p in skip)


def _has_files(path: Path, skip=()) -> bool:
    try:
        with os.scandir(path) as it:  # stops at the first file: class folders can be huge
            return any(e.is_file() and not _junk(e.name, skip) for e in it)
    except OSError:
        return False


def _class_dirs(root: Path, skip=()) -> list[Path]:
    return [Path(e.path) for e in _listdir(root) if e.is_dir() and not _junk(e.name, skip)]


def _is_class_root(root: Path, suffix: tuple[str, ...], skip=()) -> bool:
    dirs = _class_dirs(root, skip)
    if dirs and {d.name.lower() for d in dirs} <= _SPLIT_NAMES:  # train/<class>/… layout
        dirs = [cd for d in dirs for cd in _class_dirs(d, skip)]
    return any(_has_files(d.joinpath(*suffix), skip) for d in dirs)


def _auto_roots(tree: Path, skip=()) -> list[Path]:
    """Parents of the folders that directly hold files, shallowest first, none inside another;
    `train|val|test` folders are climbed out of (the folder reader handles that layout)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(tree):
        dirnames[:] = sorted(d for d in dirnames if not _junk(d, skip))
        here = Path(dirpath)
        if here == tree or not any(not _junk(f, skip) for f in filenames):
            continue
        root = here.parent
        if root.name.lower() in _SPLIT_NAMES and root != tree:
            root = root.parent
        if not any(root == f or f in root.parents for f in found):
            found = [f for f in found if root not in f.parents]
            found.append(root)
    return sorted(found)


def _resolve_roots(c: Collection, tree: Path) -> list[ClassRoot]:
    """Apply the layout patterns to `tree`. A pattern's folder part is tried as written and
    then with leading folders dropped (a user's copy is often the class folder itself)."""
    roots: list[ClassRoot] = []

    def claimed(p: Path) -> bool:
        return any(p == r.path or r.path in p.parents or p in r.path.parents for r in roots)

    for pattern in c.layout:
        parts = PurePosixPath(pattern).parts[:-1]  # drop the final "*"
        if "<class>" not in parts:  # table reader: every image under the tree
            if not claimed(tree):
                roots.append(ClassRoot(tree))
            continue
        i = parts.index("<class>")
        prefix, suffix = parts[:i], parts[i + 1 :]
        candidates: list[Path] = []
        if prefix == ("**",):
            candidates = _auto_roots(tree, c.skip)
        else:
            literal = [p for p in prefix if p not in ("*", "**")]
            for start in range(len(prefix) + 1):  # as written, then drop leading folders
                sub = prefix[start:]
                if start and sub and sub[0] in ("*", "**"):
                    continue
                if start and not literal:
                    break
                for wrap in range(3):  # archives often add a folder or two on top
                    glob = "/".join(("*",) * wrap + sub)
                    matches = sorted(tree.glob(glob)) if glob else [tree]
                    good = [m for m in matches if m.is_dir() and _is_class_root(m, suffix, c.skip)]
                    if good:
                        break
                if good:
                    candidates = good
                    break
        for path in candidates:
            if not claimed(path) and _is_class_root(path, suffix, c.skip):
                roots.append(ClassRoot(path, suffix, _folder_split(c, path, tree)))
    return roots


def _folder_split(c: Collection, root: Path, tree: Path) -> str | None:
    if not c.split or c.split.kind != "folders":
        return None
    names = {k.lower(): v for k, v in c.split.dirs}
    rel = root.relative_to(tree).parts if root != tree else ()
    for part in reversed((*tree.parts[-1:], *rel)):
        if part.lower() in names:
            return names[part.lower()]
    return None


# --- split lists / tables and object tables (read in bulk) ------------------------------------


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _find(tree: Path, globs: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for g in globs:
        out += [p for p in sorted(tree.glob(g)) if p.is_file() and p not in out]
    return out


def _read_rows(path: Path) -> Iterator[dict[str, str]]:
    """Rows of a CSV/TSV (optionally gzipped) as dicts with lower-cased keys; an EcoTaxa type
    row (`[t]`/`[f]`) is skipped."""
    with _open_text(path) as fh:
        first = fh.readline()
        delim = "\t" if first.count("\t") >= first.count(",") and "\t" in first else ","
        header = [h.strip().lower() for h in next(csv.reader([first], delimiter=delim))]
        for row in csv.reader(fh, delimiter=delim):
            if row and all(v.strip() in ("[t]", "[f]") for v in row):
                continue
            yield dict(zip(header, row, strict=False))


_ID_COLUMNS = ("object_id", "objid", "id", "img_file_name", "file", "filename", "path", "img_path")
_SPLIT_COLUMNS = ("split", "set", "subset", "dataset", "partition", "fold")


def _pick(columns, names) -> str | None:
    return next((n for n in names if n in columns), None)


def _key(value: str) -> str:
    """Match key for an image: its file name without folders and extension."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ("." + ext.lower()) in IMAGE_EXTS else name


def read_split(c: Collection, tree: Path) -> dict[str, str]:
    """Image key (file stem) -> upstream split, from the collection's file lists or table."""
    split: dict[str, str] = {}
    if not c.split or c.split.kind == "folders":
        return split
    if c.split.kind == "lists":
        for name, glob in c.split.lists:
            for path in _find(tree, (glob,)):
                with _open_text(path) as fh:
                    for line in fh:
                        if line.strip():
                            split[_key(line.strip())] = name
        return split
    for path in _find(tree, c.split.files):  # table
        rows = _read_rows(path)
        first = next(rows, None)
        if first is None:
            continue
        id_col, split_col = _pick(first, _ID_COLUMNS), _pick(first, _SPLIT_COLUMNS)
        if id_col is None or split_col is None:
            raise SourceError(
                f"{path}: split table without an id column ({', '.join(_ID_COLUMNS)}) and a "
                f"split column ({', '.join(_SPLIT_COLUMNS)}); found {sorted(first)}"
            )
        for row in _chain(first, rows):
            value = SPLIT_VALUES.get((row.get(split_col) or "").strip().lower())
            if value:
                split[_key(row.get(id_col, ""))] = value
    return split


def _chain(first, rest):
    yield first
    yield from rest


@dataclass
class ObjectTable:
    """Object id -> label and metadata, read in one pass from the collection's table."""

    rows: dict[str, dict] = field(default_factory=dict)


_TABLE_COLUMNS = {
    "label": ("taxon", "object_annotation_category", "label", "category", "class", "name"),
    "lat": ("lat", "latitude", "object_lat"),
    "lon": ("lon", "longitude", "object_lon"),
    "depth_min": ("depth_min", "object_depth_min", "depth"),
    "depth_max": ("depth_max", "object_depth_max", "depth"),
    "date": ("date", "object_date", "datetime", "time_utc"),
    "time": ("time", "object_time"),
    "sample_id": ("sample_id", "sample", "profile", "profile_id", "sample_profileid"),
}


def read_object_table(c: Collection, tree: Path) -> ObjectTable:
    table = ObjectTable()
    for path in _find(tree, c.metadata.files):
        rows = _read_rows(path)
        first = next(rows, None)
        if first is None:
            continue
        id_col = _pick(first, _ID_COLUMNS)
        if id_col is None:
            raise SourceError(f"{path}: object table without an id column; found {sorted(first)}")
        cols = {k: _pick(first, names) for k, names in _TABLE_COLUMNS.items()}
        for row in _chain(first, rows):
            table.rows[_key(row[id_col])] = {k: row.get(col) for k, col in cols.items() if col}
    if c.metadata.files and not table.rows:
        raise SourceError(
            f"{c.id}: no object table found ({', '.join(c.metadata.files)}) under {tree}"
        )
    return table


def _float(value) -> float | None:
    try:
        return float(value) if value not in (None, "", "NaN", "nan") else None
    except ValueError:
        return None


def _when(date: str | None, time: str | None) -> datetime | None:
    if not date:
        return None
    d = date.strip()
    for fmt in ("%Y%m%d", "%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S"):
        try:
            when = datetime.strptime(d, fmt).replace(tzinfo=UTC)
            break
        except ValueError:
            continue
    else:
        return None
    t = (time or "").strip().replace(":", "")
    if t.isdigit() and len(t) <= 6 and len(d) <= 10:
        t = t.zfill(6)
        when = when.replace(hour=int(t[:2]) % 24, minute=int(t[2:4]) % 60, second=int(t[4:]) % 60)
    return when


_IFCB_OLD = re.compile(r"^(IFCB\d+_(\d{4})_(\d{3})_(\d{2})(\d{2})(\d{2}))_(\d+)$")
_IFCB_NEW = re.compile(r"^(D(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})_IFCB\d+)_(\d+)$")


def ifcb_name(stem: str) -> tuple[str, datetime, int] | None:
    """(bin id, bin time UTC, ROI number) from an IFCB image file stem, both naming schemes."""
    if m := _IFCB_NEW.match(stem):
        y, mo, d, h, mi, s = (int(g) for g in m.groups()[1:7])
        return m.group(1), datetime(y, mo, d, h, mi, s, tzinfo=UTC), int(m.group(8))
    if m := _IFCB_OLD.match(stem):
        y, doy, h, mi, s = (int(g) for g in m.groups()[1:6])
        when = datetime(y, 1, 1, h, mi, s, tzinfo=UTC) + timedelta(days=doy - 1)
        return m.group(1), when, int(m.group(7))
    return None


# --- records --------------------------------------------------------------------------------


@dataclass
class Plan:
    """Everything decided before the first record is made."""

    collection: Collection
    tree: Path
    roots: list[ClassRoot]
    split: dict[str, str]
    table: ObjectTable | None


def plan(c: Collection | str, tree: Path) -> Plan:
    """Resolve the layout and read the split and object tables; `SourceError` when the tree
    does not have the collection's layout."""
    c = get(c) if isinstance(c, str) else c
    tree = Path(tree)
    roots = _resolve_roots(c, tree)
    if not roots:
        raise SourceError(
            f"{tree} does not have the layout of {c.id} ({' or '.join(c.layout)}): no class "
            "folders with images found"
        )
    table = read_object_table(c, tree) if c.metadata.kind == "table" else None
    return Plan(c, tree, roots, read_split(c, tree), table)


def collection_records(p: Plan) -> Iterator[Record | Rejection]:
    """The collection's records, stamped with its licence, instrument, citation and metadata.
    Origins are relative to the class root (prefixed by the root's folder when there are
    several), so a user's copy of the class folders and the archive give the same origins."""
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.records import Rejection

    c = p.collection
    extra = c.provenance()
    meta = c.metadata
    seen_keys: set[str] = set()
    common = Path(os.path.commonpath([r.path for r in p.roots]))
    for root in p.roots:
        prefix = ""  # roots apart by the folders below their common parent, wrappers ignored
        if root.path != common:
            prefix = root.path.relative_to(common).as_posix() + "/"
        items = _table_items(root.path) if c.reader == "table" else read_folder(root.path)
        for item in items:
            name = PurePosixPath(item.origin).name
            if c.skip and any(fnmatch.fnmatch(name, pat) for pat in c.skip):
                continue
            item.origin = prefix + item.origin
            if isinstance(item, Rejection):
                yield item
                continue
            rel = PurePosixPath(item.origin[len(prefix) :])
            if root.suffix and len(rel.parts) > 1:
                first = rel.parts[0]
                item.raw_label = first if first.lower() not in _SPLIT_NAMES else rel.parts[1]
            key = _key(name)
            item.extra.update(extra)
            split = root.split or p.split.get(key) or p.split.get(name)
            if split:
                item.extra["upstream_split"] = split
            if p.table is not None:
                seen_keys.add(key)
                row = p.table.rows.get(key)
                if row:
                    item.raw_label = row.get("label") or item.raw_label
                    item.lat, item.lon = _float(row.get("lat")), _float(row.get("lon"))
                    item.depth_min = _float(row.get("depth_min"))
                    item.depth_max = _float(row.get("depth_max"))
                    item.time_utc = _when(row.get("date"), row.get("time"))
                    item.sample_id = row.get("sample_id") or None
                else:
                    item.extra["unlabelled_reason"] = "not in the collection's object table"
            if meta.kind == "site":
                item.lat, item.lon = meta.lat, meta.lon
                item.depth_min = item.depth_max = meta.depth
            elif meta.kind == "ifcb_name" and (parsed := ifcb_name(PurePosixPath(name).stem)):
                bin_id, when, roi = parsed
                item.sample_id = item.sample_id or bin_id
                item.time_utc = item.time_utc or when
                item.extra["roi_number"] = roi
            item.instrument = item.instrument or c.instrument
            item.license = item.license or c.license
            item.license_url = item.license_url or c.license_url
            yield item
    if p.table is not None:
        for key, row in p.table.rows.items():
            if key not in seen_keys:
                yield Rejection(
                    f"table:{key}",
                    "missing_file",
                    f"the object table lists {key!r} but the archive has no image for it",
                    source_object_id=key,
                    raw_label=row.get("label"),
                )


def _table_items(root: Path) -> Iterator[Record]:
    """Every image file under `root` (labels come from the object table)."""
    from planktonzilla.readers.folder import walk_files
    from planktonzilla.records import FileBytes, Record

    for path in walk_files(root):
        if path.suffix.lower() in IMAGE_EXTS:
            rel = PurePosixPath(path.relative_to(root).as_posix())
            yield Record(origin=str(rel), image=FileBytes(path), source_object_id=_key(rel.name))


def ingest_source(
    c: Collection | str,
    store: Path,
    *,
    from_path: Path | list[Path] | None = None,
    cache: Path | None = None,
    mirror: str | None = None,
    workers: int = 1,
    progress: bool = False,
    **fetch_options,
) -> IngestReport:
    """Fetch (or take `from_path`), extract, apply the layout and ingest into `store`. All
    download, extraction and layout errors are raised before the store is touched."""
    from planktonzilla.store import ObjectStore

    c = get(c) if isinstance(c, str) else c
    tree = prepare(c, from_path=from_path, cache=cache, mirror=mirror, **fetch_options)
    p = plan(c, tree)
    return ObjectStore(store).ingest(
        collection_records(p),
        source=c.id,
        instrument=c.instrument,
        license=c.license,
        license_url=c.license_url,
        workers=workers,
        progress=progress,
    )


def with_urls(c: Collection, *urls: str) -> Collection:
    """A copy of `c` downloading from `urls` (mirrors, tests)."""
    return replace(c, download=replace(c.download, kind="http", urls=tuple(urls)))


def locate(c: Collection, folder: Path) -> Path | list[Path] | None:
    """The copy of collection `c` in `folder` (for `pz build --from-dir`): `<folder>/<id>`
    (a folder or an archive `<id>.zip|tar…`), else the download's own file names."""
    folder = Path(folder)
    if (folder / c.id).is_dir():
        return folder / c.id
    for ext in ARCHIVE_EXTS:
        if (folder / f"{c.id}{ext}").is_file():
            return folder / f"{c.id}{ext}"
    names = [name for _, name in download_targets(c)]
    present = [folder / n for n in names if (folder / n).is_file()]
    return present or None
