"""The bundled taxonomic backbone: taxa (name, rank, parent, synonyms → accepted, AphiaID,
plankton flag), vernacular terms and expert overrides, loaded from three CSV files.

Files (all in one directory, by default the package's `taxonomy/data/`):

- `backbone.csv`: `name,rank,parent,aphia_id,status,accepted,plankton`
- `vernacular.csv`: `term,name`
- `overrides.csv`: `source,raw_label,name,qualifier,root_class,plankton,note`

Lookups are case-, accent- and separator-insensitive; synonyms resolve to their accepted taxon,
so one organism always yields one lineage.
"""

from __future__ import annotations

import csv
import difflib
import hashlib
import io
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from planktonzilla.taxonomy.lineage import ALL_RANKS, RANK_DEPTH, RANKS, Lineage, living_lineage

DATA_DIR = Path(__file__).resolve().parent / "data"
BACKBONE_COLUMNS = ("name", "rank", "parent", "aphia_id", "status", "accepted", "plankton")
VERNACULAR_COLUMNS = ("term", "name")
OVERRIDE_COLUMNS = ("source", "raw_label", "name", "qualifier", "root_class", "plankton", "note")

_SEP = re.compile(r"[\s_]+")
_NON_ALNUM = re.compile(r"[^0-9a-z]+")


def norm(text: str) -> str:
    """Lookup key: accents stripped, lower-case, `_`/whitespace collapsed to one space."""
    if not text.isascii():  # the common ASCII case needs no decomposition (and is hot)
        text = unicodedata.normalize("NFKD", text)
        text = "".join(c for c in text if not unicodedata.combining(c))
    return _SEP.sub(" ", text.strip().lower()).strip()


def compact(text: str) -> str:
    """Looser key: only letters and digits ("Pseudo-nitzschia" == "pseudonitzschia")."""
    return _NON_ALNUM.sub("", norm(text))


def _flag(value: str | None) -> bool | None:
    value = (value or "").strip().lower()
    if value in ("1", "true", "yes", "y"):
        return True
    if value in ("0", "false", "no", "n"):
        return False
    return None


@dataclass(frozen=True, slots=True)
class Taxon:
    name: str
    rank: str
    parent: str = ""
    aphia_id: int | None = None
    status: str = "accepted"
    accepted: str = ""
    plankton: bool | None = None

    @property
    def is_synonym(self) -> bool:
        return self.status == "synonym"


@dataclass(frozen=True, slots=True)
class Override:
    """An expert decision for one raw label (`source` "" or "*" = any source)."""

    source: str
    raw_label: str
    name: str = ""
    qualifier: str = ""
    root_class: str = ""
    plankton: bool | None = None
    note: str = ""


@dataclass
class Backbone:
    """Taxa indexed by name, with vernacular terms and overrides.

    >>> bb = Backbone([Taxon("Animalia", "kingdom"), Taxon("Arthropoda", "phylum", "Animalia")])
    >>> bb.lineage("arthropoda").ranks()[:2]
    ('Animalia', 'Arthropoda')
    """

    taxa: Iterable[Taxon]
    vernacular: dict[str, str] = field(default_factory=dict)
    overrides: Iterable[Override] = ()
    digest: str = ""
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.taxa = list(self.taxa)
        self.overrides = list(self.overrides)
        self._by_key: dict[str, Taxon] = {}
        self._by_compact: dict[str, Taxon | None] = {}
        self._by_epithet: dict[str, list[Taxon]] = defaultdict(list)
        for t in self.taxa:
            if t.rank not in RANK_DEPTH:
                self.problems.append(f"{t.name}: unknown rank {t.rank!r}")
                continue
            key = norm(t.name)
            if key in self._by_key:
                previous = self._by_key[key]
                if previous.is_synonym and not t.is_synonym:
                    self._by_key[key] = t  # the accepted homonym wins
                self.problems.append(f"{t.name}: listed twice")
                continue
            self._by_key[key] = t
        for key, t in self._by_key.items():
            c = compact(key)
            self._by_compact[c] = None if c in self._by_compact else t
            if t.rank == "species" and " " in key:
                self._by_epithet[key.split(" ", 1)[1]].append(t)
        self._vernacular = {norm(k): v for k, v in self.vernacular.items()}
        self._overrides: dict[tuple[str, str], Override] = {}
        for o in self.overrides:
            src = "" if o.source in ("", "*") else o.source
            self._overrides[(src, o.raw_label.strip())] = o
        self._lineages: dict[str, Lineage] = {}
        self._fuzzy_pool: dict[str, list[str]] | None = None
        for t in self._by_key.values():
            if t.is_synonym and not self.get(t.accepted):
                self.problems.append(f"{t.name}: synonym of unknown {t.accepted!r}")
            if not t.is_synonym and t.parent and not self.get(t.parent):
                self.problems.append(f"{t.name}: unknown parent {t.parent!r}")
            if not t.is_synonym and not t.parent and t.rank != "kingdom":
                self.problems.append(f"{t.name}: no parent for a {t.rank}")

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str | Path | None = None) -> Backbone:
        """Read the backbone from a directory (default: the packaged data) or a `backbone.csv`
        path; `vernacular.csv` and `overrides.csv` beside it are read when present."""
        base = Path(path) if path is not None else DATA_DIR
        backbone_csv = base if base.suffix == ".csv" else base / "backbone.csv"
        folder = backbone_csv.parent
        if not backbone_csv.is_file():
            raise FileNotFoundError(f"taxonomic backbone not found: {backbone_csv}")
        digest = hashlib.sha256()
        taxa = []
        for row in _read_csv(backbone_csv, BACKBONE_COLUMNS, digest):
            aphia = (row.get("aphia_id") or "").strip()
            status = (row.get("status") or "accepted").strip().lower() or "accepted"
            taxa.append(
                Taxon(
                    name=row["name"].strip(),
                    rank=(row.get("rank") or "").strip().lower(),
                    parent=(row.get("parent") or "").strip(),
                    aphia_id=int(float(aphia)) if aphia else None,
                    status=status,
                    accepted=(row.get("accepted") or "").strip(),
                    plankton=_flag(row.get("plankton")),
                )
            )
        vernacular: dict[str, str] = {}
        if (folder / "vernacular.csv").is_file():
            for row in _read_csv(folder / "vernacular.csv", VERNACULAR_COLUMNS, digest):
                if row["term"].strip():
                    vernacular[row["term"].strip()] = (row.get("name") or "").strip()
        overrides = []
        if (folder / "overrides.csv").is_file():
            for row in _read_csv(folder / "overrides.csv", OVERRIDE_COLUMNS[:2], digest):
                overrides.append(
                    Override(
                        source=(row.get("source") or "").strip(),
                        raw_label=row["raw_label"],
                        name=(row.get("name") or "").strip(),
                        qualifier=(row.get("qualifier") or "").strip(),
                        root_class=(row.get("root_class") or "").strip().lower(),
                        plankton=_flag(row.get("plankton")),
                        note=(row.get("note") or "").strip(),
                    )
                )
        return cls(taxa, vernacular, overrides, digest=digest.hexdigest()[:16])

    # -- lookups ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._by_key)

    def __contains__(self, name: str) -> bool:
        return norm(name) in self._by_key

    def __iter__(self) -> Iterator[Taxon]:
        return iter(self._by_key.values())

    def get(self, name: str) -> Taxon | None:
        """The taxon listed under `name` (synonym or accepted), or None."""
        return self._by_key.get(norm(name))

    def find(self, name: str) -> Taxon | None:
        """The *accepted* taxon for `name` (exact, then separator-insensitive), or None."""
        t = self._by_key.get(norm(name)) or self._by_compact.get(compact(name))
        return self.accepted(t) if t else None

    def accepted(self, taxon: Taxon) -> Taxon:
        seen = set()
        while taxon.is_synonym and taxon.accepted and taxon.name not in seen:
            seen.add(taxon.name)
            target = self.get(taxon.accepted)
            if target is None:
                break
            taxon = target
        return taxon

    def by_epithet(self, epithet: str) -> list[Taxon]:
        """Species whose epithet is `epithet` (accepted taxa)."""
        return [self.accepted(t) for t in self._by_epithet.get(norm(epithet), [])]

    def vernacular_name(self, term: str) -> str | None:
        """The backbone name a common word maps to ("" = known word, no taxon), or None."""
        return self._vernacular.get(norm(term))

    def override(self, source: str | None, raw_label: str) -> Override | None:
        label = raw_label.strip()
        return self._overrides.get((source or "", label)) or self._overrides.get(("", label))

    def parent(self, taxon: Taxon) -> Taxon | None:
        if not taxon.parent:
            return None
        p = self.get(taxon.parent)
        return self.accepted(p) if p else None

    def ancestors(self, taxon: Taxon) -> list[Taxon]:
        """`taxon` and its ancestors, bottom-up (accepted taxa)."""
        chain, seen = [], set()
        t: Taxon | None = self.accepted(taxon)
        while t is not None and t.name not in seen:
            seen.add(t.name)
            chain.append(t)
            t = self.parent(t)
        return chain

    def is_ancestor(self, ancestor: Taxon, taxon: Taxon) -> bool:
        """True when `ancestor` is `taxon` or above it."""
        a = self.accepted(ancestor).name
        return any(t.name == a for t in self.ancestors(taxon))

    def common_ancestor(self, taxa: Iterable[Taxon]) -> Taxon | None:
        chains = [self.ancestors(t) for t in taxa]
        if not chains:
            return None
        shared = set.intersection(*({t.name for t in c} for c in chains))
        for t in chains[0]:
            if t.name in shared:
                return t
        return None

    def lineage(self, name: str | Taxon) -> Lineage:
        """The seven-rank lineage of an accepted taxon (synonyms followed). A missing major
        rank between two known ones is filled with "<parent> incertae sedis" so that ranks
        stay a contiguous prefix."""
        taxon = name if isinstance(name, Taxon) else self.find(name)
        if taxon is None:
            raise KeyError(f"not in the backbone: {name!r}")
        taxon = self.accepted(taxon)
        cached = self._lineages.get(taxon.name)
        if cached is not None:
            return cached
        chain = self.ancestors(taxon)
        values = {t.rank: t.name for t in chain if t.rank in RANKS}
        plankton = next((t.plankton for t in chain if t.plankton is not None), None)
        lin = living_lineage(
            values, name=taxon.name, rank=taxon.rank, aphia_id=taxon.aphia_id, plankton=plankton
        )
        self._lineages[taxon.name] = lin
        return lin

    # -- approximate matching -----------------------------------------------------------------

    def fuzzy(self, text: str, cutoff: float = 0.88) -> Taxon | None:
        """The one backbone name within a typo of `text` (difflib ratio ≥ cutoff), or None
        when none or several are that close."""
        key = norm(text)
        if len(key) < 6:
            return None
        n = len(key)
        # difflib's ratio is at most 2·min(len)/(sum of lens): skip names too short or long
        pool = [
            k for k in self._pool().get(key[0], ()) if 2 * min(n, len(k)) >= cutoff * (n + len(k))
        ]
        close = difflib.get_close_matches(key, pool, n=2, cutoff=cutoff)
        if not close:
            return None
        if len(close) == 2:
            r0 = difflib.SequenceMatcher(None, key, close[0]).ratio()
            r1 = difflib.SequenceMatcher(None, key, close[1]).ratio()
            if r0 - r1 < 0.03 and self.find(close[0]) != self.find(close[1]):
                return None
        return self.find(close[0])

    def prefix(self, text: str, *, above_genus: bool = True) -> Taxon | None:
        """The one accepted taxon whose name starts with `text` (an abbreviation), or None."""
        key = norm(text)
        if len(key) < 4:
            return None
        hits = {
            self.accepted(t).name: self.accepted(t)
            for k, t in self._by_key.items()
            if k.startswith(key)
            and " " not in k
            and (not above_genus or RANK_DEPTH[t.rank] < RANK_DEPTH["genus"])
        }
        return next(iter(hits.values())) if len(hits) == 1 else None

    def suggest(self, text: str, n: int = 5) -> list[str]:
        """Closest backbone names and vernacular terms to `text` (for review)."""
        key = norm(text)
        pool = list(self._by_key) + list(self._vernacular)
        out = []
        for cand in difflib.get_close_matches(key, pool, n=n * 2, cutoff=0.6):
            t = self._by_key.get(cand)
            if t is None:
                target = self._vernacular.get(cand) or ""
                label = f"{cand} → {target}" if target else cand
            else:
                label = self.accepted(t).name
            if label not in out:
                out.append(label)
        return out[:n]

    def _pool(self) -> dict[str, list[str]]:
        if self._fuzzy_pool is None:
            pool: dict[str, list[str]] = defaultdict(list)
            for key in self._by_key:
                pool[key[0]].append(key)
            self._fuzzy_pool = dict(pool)
        return self._fuzzy_pool


def _read_csv(path: Path, required: Iterable[str], digest) -> Iterator[dict[str, str]]:
    data = path.read_bytes()
    digest.update(data)
    text = data.decode("utf-8-sig")
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    for row in reader:
        if not row or not any((v or "").strip() for v in row.values()):
            continue
        if (next(iter(row.values())) or "").lstrip().startswith("#"):
            continue
        yield row


__all__ = ["ALL_RANKS", "Backbone", "Override", "Taxon", "compact", "norm"]
