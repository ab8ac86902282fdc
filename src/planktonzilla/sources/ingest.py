"""From a collection's download (or a copy the user already has) to records in a store.

`prepare` fetches and safely extracts (or takes `--from` a local archive or folder);
`plan` applies the collection's layout rule to the tree and reads its split lists / tables and
object tables in bulk, before anything is written; `collection_records` yields the records,
stamped with the collection's licence, instrument, citation and fixed-site metadata; and
`ingest_source` runs the lot into an `ObjectStore`. Every network or archive failure happens in
`prepare`/`plan`, so a failed fetch never leaves a partial store.
"""

from __future__ import annotations

import fnmatch
import gzip
import io
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from planktonzilla.constants import cache_dir
from planktonzilla.exceptions import SourceError
from planktonzilla.sources.registry import Collection, get

if TYPE_CHECKING:
    import httpx

    from planktonzilla.records import Record, Rejection
    from planktonzilla.store import IngestReport, ObjectStore

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


def download_targets(c: Collection, mirror: str | None = None) -> list[tuple[str, str]]:
    """(url, file name) for each file to download; the names come from the registry (WHOI's
    nine URLs all end in `download`). `mirror` replaces the hosts with
    `<mirror>/<collection id>/<file name>` (an institutional copy, or a test server)."""
    if c.download.kind == "fairdata":
        name = f"{c.download.dataset}.zip"
        return [(f"{mirror.rstrip('/')}/{c.id}/{name}" if mirror else "", name)]
    out = []
    for url, name in zip(c.download.urls, c.file_names(), strict=True):
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
        stem = _archive_stem(archive.name)
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
        own = {a.name for a in archives} & set(c.file_names())  # the download's own files
        if archives and (own or not _resolve_roots(c, from_path)):
            return extract_all(archives, base / "extracted", **limits)
        return from_path
    from planktonzilla.exceptions import ExtractError, UnsafeArchiveError

    def download() -> list[Path]:
        return fetch(
            c,
            base / "downloads",
            mirror=mirror,
            client=client,
            fairdata_url=fairdata_url,
            retries=retries,
            backoff=backoff,
            poll_interval=poll_interval,
        )

    archives = download()
    for archive in archives:
        try:
            extract_all([archive], base / "extracted", **limits)
        except UnsafeArchiveError:
            raise
        except ExtractError:
            # A body cut short by a host that sent no length looks complete until it is read:
            # hand it back to the downloader as a partial file, which resumes it (once).
            archive.rename(archive.with_name(archive.name + ".part"))
            download()
            extract_all([archive], base / "extracted", **limits)
    return base / "extracted"


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
                good = []
                for wrap in range(3):  # archives often add a folder or two on top, some
                    glob = "/".join(("*",) * wrap + sub)  # of them only (WHOI's years)
                    matches = sorted(tree.glob(glob)) if glob else [tree]
                    good += [m for m in matches if m.is_dir() and _is_class_root(m, suffix, c.skip)]
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


# --- split lists / tables and object tables (read in bulk, held in DuckDB) --------------------


def _find(tree: Path, globs: tuple[str, ...]) -> list[Path]:
    out: list[Path] = []
    for g in globs:
        out += [p for p in sorted(tree.glob(g)) if p.is_file() and p not in out]
    return out


_ID_COLUMNS = ("object_id", "objid", "id", "img_file_name", "file", "filename", "path", "img_path")
_SPLIT_COLUMNS = ("set", "split", "subset", "dataset", "partition", "fold")
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
#: The table fields whose absence is reported (the label is required, time goes with date).
_EXPECTED_TABLE_FIELDS = ("lat", "lon", "depth_min", "date", "sample_id")
_IMAGE_EXT_RE = "\\.(" + "|".join(sorted(e[1:] for e in IMAGE_EXTS)) + ")$"


def _key(value: str) -> str:
    """Match key for an image: its file name without folders and extension."""
    name = value.replace("\\", "/").rsplit("/", 1)[-1]
    stem, dot, ext = name.rpartition(".")
    return stem if dot and ("." + ext.lower()) in IMAGE_EXTS else name


def _sql_key(column: str) -> str:
    """`_key` in DuckDB SQL, so tables are keyed without a Python loop over their rows."""
    return (
        f"regexp_replace(regexp_replace(replace({_q(column)}, '\\\\', '/'), '^.*/', ''),"
        f" '{_IMAGE_EXT_RE}', '', 'i')"
    )


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class Tables:
    """The collection's split and object tables, loaded by DuckDB into a database file in a
    temporary folder (memory stays bounded for the 7.4 M-row global_uvp5 table) and looked up
    one batch of images at a time. `warnings` says what was expected and not found."""

    def __init__(self, c: Collection, tree: Path):
        import duckdb

        self.c = c
        self.warnings: list[str] = []
        self.split_expected: dict[str, int] = {}
        self.label_col: str | None = None
        self.field_cols: dict[str, str] = {}
        self.other_cols: list[str] = []
        self.has_split = self.has_table = False
        self._dir = tempfile.TemporaryDirectory(prefix="pz-tables-")
        self.con = duckdb.connect(str(Path(self._dir.name) / "tables.duckdb"))
        self.con.execute("SET preserve_insertion_order = false")
        try:
            if c.split and c.split.kind in ("lists", "table"):
                self._load_split(tree)
            if c.metadata.kind == "table":
                self._load_objects(tree)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        self.con.close()
        self._dir.cleanup()

    def _columns(self, path: Path) -> list[str]:
        rows = self.con.execute(
            "DESCRIBE SELECT * FROM read_csv(?, all_varchar = true, header = true)", [str(path)]
        ).fetchall()
        return [r[0] for r in rows]

    def _load_split(self, tree: Path) -> None:
        import pyarrow as pa

        split = self.c.split
        self.con.execute("CREATE TABLE split (key VARCHAR, split VARCHAR)")
        cases = " ".join(f"WHEN '{k}' THEN '{v}'" for k, v in SPLIT_VALUES.items())
        found = []
        if split.kind == "lists":
            for name, glob in split.lists:
                for path in _find(tree, (glob,)):
                    found.append(path)
                    with _open_text(path) as fh:
                        keys = [_key(line.strip()) for line in fh if line.strip()]
                    self.con.register("lines", pa.table({"key": pa.array(keys, pa.string())}))
                    self.con.execute(f"INSERT INTO split SELECT key, '{name}' FROM lines")
        else:
            for path in _find(tree, split.files):
                found.append(path)
                cols = {c.strip().lower(): c for c in self._columns(path)}
                id_col, split_col = _pick(cols, _ID_COLUMNS), _pick(cols, _SPLIT_COLUMNS)
                if id_col is None or split_col is None:
                    raise SourceError(
                        f"{path}: split table without an id column ({', '.join(_ID_COLUMNS)}) "
                        f"and a split column ({', '.join(_SPLIT_COLUMNS)}); found {sorted(cols)}"
                    )
                self.con.execute(
                    f"INSERT INTO split SELECT {_sql_key(cols[id_col])},"
                    f" CASE lower(trim({_q(cols[split_col])})) {cases} END"
                    " FROM read_csv(?, all_varchar = true, header = true)",
                    [str(path)],
                )
        if not found:
            what = (
                ", ".join(g for _, g in split.lists)
                if split.kind == "lists"
                else ", ".join(split.files)
            )
            note = "" if split.verified else " (this split file is not verified to exist)"
            self.warnings.append(
                f"{self.c.id}: no upstream split found ({what}) under {tree}{note}: "
                f"top-level entries are {sorted(p.name for p in tree.iterdir())[:12]}"
            )
            return
        self.has_split = True
        self.con.execute(
            "CREATE TABLE split1 AS SELECT DISTINCT ON (key) key, split FROM split"
            " WHERE split IS NOT NULL; DROP TABLE split; ALTER TABLE split1 RENAME TO split"
        )
        self.split_expected = dict(
            self.con.execute("SELECT split, count(*) FROM split GROUP BY split").fetchall()
        )

    def _load_objects(self, tree: Path) -> None:
        paths = _find(tree, self.c.metadata.files)
        if not paths:
            raise SourceError(
                f"{self.c.id}: no object table found ({', '.join(self.c.metadata.files)}) "
                f"under {tree}"
            )
        path = paths[0]  # one table per collection (the first match wins)
        cols = {c.strip().lower(): c for c in self._columns(path)}
        id_col = _pick(cols, _ID_COLUMNS)
        if id_col is None:
            raise SourceError(f"{path}: object table without an id column; found {sorted(cols)}")
        found = {k: cols[n] for k, names in _TABLE_COLUMNS.items() if (n := _pick(cols, names))}
        self.label_col = found.pop("label", None)
        self.field_cols = found
        used = {cols[id_col], self.label_col, *found.values()}
        self.other_cols = [c for c in cols.values() if c not in used]
        if self.label_col is None:
            self.warnings.append(
                f"{path.name}: no label column ({', '.join(_TABLE_COLUMNS['label'])}); "
                f"found {sorted(cols)}"
            )
        missing = [f for f in _EXPECTED_TABLE_FIELDS if f not in found]
        if missing:
            self.warnings.append(
                f"{path.name}: no column for {', '.join(missing)} (those fields stay empty); "
                f"columns found: {', '.join(cols.values())}"
            )
        self.con.execute(
            f"CREATE TABLE objtab AS SELECT DISTINCT ON (_key) {_sql_key(cols[id_col])} AS _key, *"
            " FROM read_csv(?, all_varchar = true, header = true)"
            f" WHERE {_q(cols[id_col])} NOT IN ('[t]', '[f]')",  # an EcoTaxa type row
            [str(path)],
        )
        self.con.execute("CREATE TABLE seen (key VARCHAR)")
        self.has_table = True

    def lookup(self, keys: list[str]) -> tuple[dict[str, str], dict[str, dict]]:
        """(key -> split, key -> object-table row) for one batch of image keys."""
        import pyarrow as pa

        if not (self.has_split or self.has_table):
            return {}, {}
        self.con.register("batch", pa.table({"key": pa.array(keys, pa.string())}))
        split: dict[str, str] = {}
        rows: dict[str, dict] = {}
        if self.has_split:
            split = dict(
                self.con.execute(
                    "SELECT s.key, s.split FROM split s JOIN batch b USING (key)"
                ).fetchall()
            )
        if self.has_table:
            self.con.execute("INSERT INTO seen SELECT key FROM batch")
            t = self.con.sql(
                "SELECT o.* FROM objtab o JOIN batch b ON o._key = b.key"
            ).to_arrow_table()
            rows = {r["_key"]: r for r in t.to_pylist()}
        return split, rows

    def unseen(self) -> Iterator[tuple[str, str | None]]:
        """(key, label) of object-table rows no image matched, streamed."""
        if not self.has_table:
            return
        label = _q(self.label_col) if self.label_col else "NULL"
        cur = self.con.execute(
            f"SELECT _key, {label} FROM objtab WHERE _key NOT IN (SELECT key FROM seen)"
            " ORDER BY _key"
        )
        while chunk := cur.fetchmany(10_000):
            yield from chunk


def _open_text(path: Path) -> io.TextIOBase:
    if path.name.lower().endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path), encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def _pick(columns, names) -> str | None:
    return next((n for n in names if n in columns), None)


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

_BATCH = 50_000  # each batch lookup scans the object table once: few, large batches


@dataclass
class Counts:
    """What the tree held, by archive and by upstream split, against what was expected."""

    expected: int
    archives: tuple[str, ...] = ()  # the download's archives (empty for a user's folder)
    by_archive: Counter = field(default_factory=Counter)
    by_split: Counter = field(default_factory=Counter)
    split_expected: dict[str, int] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything decided before the first record is made."""

    collection: Collection
    tree: Path
    roots: list[ClassRoot]
    tables: Tables
    counts: Counts

    @property
    def warnings(self) -> list[str]:
        return self.tables.warnings


def _archive_stem(name: str) -> str:
    for ext in ARCHIVE_EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def plan(c: Collection | str, tree: Path) -> Plan:
    """Resolve the layout and load the split and object tables; `SourceError` when the tree
    does not have the collection's layout."""
    c = get(c) if isinstance(c, str) else c
    tree = Path(tree)
    roots = _resolve_roots(c, tree)
    if not roots:
        raise SourceError(
            f"{tree} does not have the layout of {c.id} ({' or '.join(c.layout)}): no class "
            "folders with images found"
        )
    tables = Tables(c, tree)
    stems = tuple(_archive_stem(name) for _, name in download_targets(c))
    extracted = any((tree / s).is_dir() for s in stems)  # else a user's own folder
    counts = Counts(c.images, stems if extracted else (), split_expected=tables.split_expected)
    return Plan(c, tree, roots, tables, counts)


def collection_records(p: Plan) -> Iterator[Record | Rejection]:
    """The collection's records, stamped with its licence, instrument, citation and metadata.
    Origins are relative to the class root (prefixed by the root's folder when there are
    several), so a user's copy of the class folders and the archive give the same origins.
    Counts what it yields in `p.counts`; closes `p.tables` when done."""
    from planktonzilla.readers.folder import read_folder
    from planktonzilla.records import Rejection

    c = p.collection
    common = Path(os.path.commonpath([r.path for r in p.roots]))
    try:
        for root in p.roots:
            prefix = ""  # roots apart by the folders below their common parent
            if root.path != common:
                prefix = root.path.relative_to(common).as_posix() + "/"
            rel = root.path.relative_to(p.tree).parts if root.path != p.tree else ()
            items = _table_items(root.path) if c.reader == "table" else read_folder(root.path)
            for batch in _batches(items, _BATCH):
                keep = [
                    it
                    for it in batch
                    if not (
                        c.skip
                        and any(
                            fnmatch.fnmatch(PurePosixPath(it.origin).name, pat) for pat in c.skip
                        )
                    )
                ]
                names = [PurePosixPath(it.origin).name for it in keep]
                splits, rows = p.tables.lookup(sorted({_key(n) for n in names}))
                for item, name in zip(keep, names, strict=True):
                    first = (*rel, *PurePosixPath(item.origin).parts)[0]
                    p.counts.by_archive[first if first in p.counts.archives else None] += 1
                    item.origin = prefix + item.origin
                    if isinstance(item, Rejection):
                        yield item
                        continue
                    _stamp(p, root, item, prefix, name, splits, rows)
                    if split := item.extra.get("upstream_split"):
                        p.counts.by_split[split] += 1
                    yield item
        for key, label in p.tables.unseen():
            yield Rejection(
                f"table:{key}",
                "missing_file",
                f"the object table lists {key!r} but the archive has no image for it",
                source_object_id=key,
                raw_label=label,
            )
    finally:
        p.tables.close()


def _batches(items, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _stamp(p: Plan, root: ClassRoot, item: Record, prefix, name, splits, rows) -> None:
    c, meta, t = p.collection, p.collection.metadata, p.tables
    rel = PurePosixPath(item.origin[len(prefix) :])
    if root.suffix and len(rel.parts) > 1:
        first = rel.parts[0]
        item.raw_label = first if first.lower() not in _SPLIT_NAMES else rel.parts[1]
    key = _key(name)
    item.extra.update(c.provenance())
    split = root.split or splits.get(key)
    if split:
        item.extra["upstream_split"] = split
    if t.has_table:
        row = rows.get(key)
        if row:
            f = t.field_cols
            item.raw_label = (row.get(t.label_col) if t.label_col else None) or item.raw_label
            item.lat, item.lon = _float(row.get(f.get("lat"))), _float(row.get(f.get("lon")))
            item.depth_min = _float(row.get(f.get("depth_min")))
            item.depth_max = _float(row.get(f.get("depth_max")))
            item.time_utc = _when(row.get(f.get("date")), row.get(f.get("time")))
            item.sample_id = row.get(f.get("sample_id")) or None
            other = {k: row[k] for k in t.other_cols if row.get(k) not in (None, "")}
            if other:  # columns nobody has verified are kept, not dropped
                item.extra["object_table"] = other
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


def _table_items(root: Path) -> Iterator[Record]:
    """Every image file under `root` (labels come from the object table)."""
    from planktonzilla.readers.folder import walk_files
    from planktonzilla.records import FileBytes, Record

    for path in walk_files(root):
        if path.suffix.lower() in IMAGE_EXTS:
            rel = PurePosixPath(path.relative_to(root).as_posix())
            yield Record(origin=str(rel), image=FileBytes(path), source_object_id=_key(rel.name))


#: The metadata fields a build reports on, as store columns.
REPORTED = {"lat": "lat", "lon": "lon", "depth": "depth_min", "time": "time_utc"}


def empty_fields(store: ObjectStore, source: str) -> tuple[int, dict[str, int]]:
    """(objects of `source`, {field: objects without it}) in the store's `objects` view (so
    with what `pz enrich` fetched)."""
    counts = ", ".join(f"count(*) FILTER (WHERE {c} IS NULL) AS {n}" for n, c in REPORTED.items())
    quoted = source.replace("'", "''")
    row = store.query(
        f"SELECT count(*) AS n, {counts} FROM objects WHERE source = '{quoted}'"
    ).to_pylist()[0]
    return row.pop("n"), row


@dataclass
class SourceReport:
    """One collection's ingest: the store's report, what the plan warned about, and the count
    check (stored + rejected in the store for this source vs the registry's expected count)."""

    ingest: IngestReport
    counts: Counts
    warnings: list[str]
    stored_total: int
    rejected_total: int
    empty: dict[str, int] = field(default_factory=dict)  # field -> stored objects without it

    @property
    def ok(self) -> bool:
        return self.ingest.ok

    @property
    def accounted(self) -> int:
        return self.stored_total + self.rejected_total

    @property
    def shortfall(self) -> int:
        return max(0, self.counts.expected - self.accounted)

    def count_lines(self) -> list[str]:
        """The count check; on a shortfall, which archive or split fell short."""
        n = self.counts
        source = self.ingest.source
        head = (
            f"{source}: stored {self.stored_total:,} + rejected {self.rejected_total:,} = "
            f"{self.accounted:,} of {n.expected:,} expected"
        )
        if not self.shortfall:
            return [head + " (complete)"]
        lines = [head + f": SHORT by {self.shortfall:,} ({self.accounted / n.expected:.2%})"]
        missing = [a for a in n.archives if not n.by_archive.get(a)]
        if missing:
            lines.append(f"  archives with no images: {', '.join(missing)}")
        if n.archives:
            found = ", ".join(f"{a}: {n.by_archive.get(a, 0):,}" for a in n.archives)
            lines.append(f"  images per archive: {found}")
        for split, want in sorted(n.split_expected.items()):
            got = n.by_split.get(split, 0)
            if got < want:
                lines.append(f"  split {split}: {got:,} of {want:,} listed in the split table")
        return lines

    def empty_lines(self) -> list[str]:
        """One line naming the metadata fields left empty, with how many objects lack each."""
        gaps = [f"{k} {v:,}" for k, v in self.empty.items() if v]
        if not gaps:
            return []
        return [f"{self.ingest.source}: of {self.stored_total:,} stored, empty: {', '.join(gaps)}"]


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
) -> SourceReport:
    """Fetch (or take `from_path`), extract, apply the layout and ingest into `store`, then
    check the counts. All download, extraction and layout errors are raised before the store
    is touched."""
    from planktonzilla.store import ObjectStore

    c = get(c) if isinstance(c, str) else c
    tree = prepare(c, from_path=from_path, cache=cache, mirror=mirror, **fetch_options)
    p = plan(c, tree)
    store = ObjectStore(store)
    report = store.ingest(
        collection_records(p),
        source=c.id,
        instrument=c.instrument,
        license=c.license,
        license_url=c.license_url,
        workers=workers,
        progress=progress,
    )
    entry = store.manifest()["sources"].get(c.id, {})
    _, empty = empty_fields(store, c.id)
    return SourceReport(
        report, p.counts, p.warnings, entry.get("objects", 0), entry.get("rejected", 0), empty
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
