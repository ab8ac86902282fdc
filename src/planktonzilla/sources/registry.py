"""The 15 public collections as data (`collections.toml` beside this file), loaded into frozen
records. `collections()` lists them, `get(id)` returns one."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import unquote, urlsplit

SPLITS = ("train", "val", "test")
READERS = ("folder", "table")
ARCHIVES = ("zip", "tar", "tar.gz", "zip-in-zip", "folder")
DOWNLOADS = ("http", "fairdata", "manual")
METADATA = ("none", "site", "table", "ifcb_name")
SPLIT_KINDS = ("folders", "lists", "table")
ENRICH = ("ecotaxa", "ifcb_dashboard")
#: The metadata fields a build reports on (filled by the archive, `pz enrich`, or missing).
GEO_FIELDS = ("lat", "lon", "depth", "time")


@dataclass(frozen=True)
class Download:
    kind: str  # "http" | "fairdata" | "manual"
    urls: tuple[str, ...] = ()
    names: tuple[str, ...] = ()  # local file name per url ("" = from the URL)
    dataset: str | None = None  # Fairdata dataset id
    size: int | None = None  # exact bytes, verified (single-file downloads)
    approx_size: int | None = None  # an estimate, for disk-space checks only
    sha256: str | None = None


@dataclass(frozen=True)
class Split:
    kind: str  # "folders" | "lists" | "table"
    dirs: tuple[tuple[str, str], ...] = ()  # folders: (folder name, split)
    lists: tuple[tuple[str, str], ...] = ()  # lists: (split, glob of the file list)
    files: tuple[str, ...] = ()  # table: globs of the split table
    verified: bool = True  # False: nobody has seen this split file in the real archive


@dataclass(frozen=True)
class Metadata:
    kind: str = "none"  # "none" | "site" | "table" | "ifcb_name"
    lat: float | None = None
    lon: float | None = None
    depth: float | None = None
    files: tuple[str, ...] = ()  # table: globs of the object table

    @property
    def fields(self) -> frozenset[str]:
        """Which of GEO_FIELDS the archive itself gives (a table's columns are checked at run
        time: only `object_id` and `taxon` are verified for global_uvp5)."""
        return frozenset(
            {"site": ("lat", "lon", "depth"), "ifcb_name": ("time",)}.get(self.kind, ())
        )


@dataclass(frozen=True)
class Enrich:
    """Metadata fetched from a service after ingest (`planktonzilla.sources.enrich`)."""

    kind: str  # "ecotaxa" | "ifcb_dashboard"
    lat: float | None = None  # ifcb_dashboard: the fixed site, stamped when offline
    lon: float | None = None
    depth: float | None = None
    projects: tuple[int, ...] = ()  # ecotaxa: the source projects, when known


@dataclass(frozen=True)
class Collection:
    """One public collection: what it is, where it lives, and how its tree reads."""

    id: str
    name: str
    instrument: str
    images: int
    license: str
    license_url: str
    citation: str
    doi: str
    reader: str
    archive: str
    download: Download
    layout: tuple[str, ...]
    split: Split | None = None
    metadata: Metadata = field(default_factory=Metadata)
    skip: tuple[str, ...] = ()
    license_note: str | None = None
    enrich: Enrich | None = None

    @property
    def doi_url(self) -> str:
        return f"https://doi.org/{self.doi}"

    @property
    def download_size(self) -> int | None:
        """Bytes to download when known (exact or approximate)."""
        return self.download.size or self.download.approx_size

    def file_names(self) -> tuple[str, ...]:
        """The local file name of each download URL: the registry's `names`, else the URL's
        last path segment."""
        names = self.download.names or ("",) * len(self.download.urls)
        return tuple(n or _url_name(u) for u, n in zip(self.download.urls, names, strict=True))

    def provenance(self) -> dict[str, str]:
        """Keys added to every record's `extra`."""
        out = {"citation": self.citation, "doi": self.doi, "collection": self.name}
        if self.license_note:
            out["license_note"] = self.license_note
        return out


def _url_name(url: str) -> str:
    return unquote(PurePosixPath(urlsplit(url).path).name) or "download"


def _parse(raw: dict[str, Any]) -> Collection:
    def check(value, allowed, what):
        if value not in allowed:
            raise ValueError(f"collection {raw.get('id')!r}: {what} {value!r} not in {allowed}")
        return value

    d = raw["download"]
    download = Download(
        kind=check(d["kind"], DOWNLOADS, "download kind"),
        urls=tuple(d.get("urls", ())),
        names=tuple(d.get("names", ())),
        dataset=d.get("dataset"),
        size=d.get("size"),
        approx_size=d.get("approx_size"),
        sha256=d.get("sha256"),
    )
    split = None
    if s := raw.get("split"):
        split = Split(
            kind=check(s["kind"], SPLIT_KINDS, "split kind"),
            dirs=tuple((k, check(v, SPLITS, "split")) for k, v in s.get("dirs", {}).items()),
            lists=tuple((k, s[k]) for k in SPLITS if k in s and s["kind"] == "lists"),
            files=tuple(s.get("files", ())),
            verified=bool(s.get("verified", True)),
        )
    m = raw.get("metadata", {"kind": "none"})
    metadata = Metadata(
        kind=check(m["kind"], METADATA, "metadata kind"),
        lat=m.get("lat"),
        lon=m.get("lon"),
        depth=m.get("depth"),
        files=tuple(m.get("files", ())),
    )
    enrich = None
    if e := raw.get("enrich"):
        enrich = Enrich(
            check(e["kind"], ENRICH, "enrich kind"), e.get("lat"), e.get("lon"), e.get("depth")
        )
    layout = tuple(raw["layout"])
    for pattern in layout:
        parts = PurePosixPath(pattern).parts
        if parts[-1] != "*" or (raw["reader"] == "folder" and "<class>" not in parts):
            raise ValueError(f"collection {raw['id']!r}: bad layout pattern {pattern!r}")
    c = Collection(
        id=raw["id"],
        name=raw["name"],
        instrument=raw["instrument"],
        images=int(raw["images"]),
        license=raw["license"],
        license_url=raw["license_url"],
        citation=raw["citation"],
        doi=raw["doi"],
        reader=check(raw["reader"], READERS, "reader"),
        archive=check(raw["archive"], ARCHIVES, "archive"),
        download=download,
        layout=layout,
        split=split,
        metadata=metadata,
        skip=tuple(raw.get("skip", ())),
        license_note=raw.get("license_note"),
        enrich=enrich,
    )
    if download.names and len(download.names) != len(download.urls):
        raise ValueError(
            f"collection {c.id!r}: {len(download.names)} names for {len(download.urls)} urls"
        )
    names = c.file_names()
    if len(set(names)) != len(names):  # two URLs ending in `download` would overwrite each other
        raise ValueError(f"collection {c.id!r}: download file names collide {names}; add `names`")
    return c


@cache
def _load() -> dict[str, Collection]:
    text = resources.files(__package__).joinpath("collections.toml").read_text("utf-8")
    out: dict[str, Collection] = {}
    for raw in tomllib.loads(text)["collection"]:
        c = _parse(raw)
        if c.id in out:
            raise ValueError(f"collection {c.id!r} listed twice")
        out[c.id] = c
    return out


def collections() -> tuple[Collection, ...]:
    """All registered collections, in registry order."""
    return tuple(_load().values())


def get(collection_id: str) -> Collection:
    """The collection `collection_id`, or `KeyError` naming the known ids."""
    try:
        return _load()[collection_id]
    except KeyError:
        known = ", ".join(_load())
        raise KeyError(f"unknown collection {collection_id!r}; known: {known}") from None


def ids() -> tuple[str, ...]:
    return tuple(_load())
