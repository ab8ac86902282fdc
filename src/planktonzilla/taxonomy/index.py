"""The broad name index under the curated backbone: ~10^5 genera and species of plankton
groups from NCBI Taxonomy (`build_index.py` writes it), read lazily on the first name the
curated backbone does not know, and grafted under the curated upper ranks.

Grafting: walk the NCBI lineage of a name upward until a name the curated backbone knows (by
name or synonym, in a compatible kingdom); the ranks from there up are ours (WoRMS), the
ranks below are filled from the NCBI ranks of the nodes between (order, family, genus,
species). NCBI's `Hexanauplia › Copepoda › Neocopepoda › Calanoida` thus ends up under our
`Copepoda` (a class), and a species of a genus we list as a synonym (`Ceratium furca`) is
renamed into the accepted genus (`Tripos furca`).
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

from planktonzilla.taxonomy.backbone import DATA_DIR, Backbone, Taxon, norm
from planktonzilla.taxonomy.lineage import ALL_RANKS, RANK_DEPTH, RANKS, Lineage, living_lineage

PACKAGED_INDEX = DATA_DIR / "name_index.tsv.gz"
#: environment variable naming a fresh index (`pz taxonomy build-index --out FILE`)
INDEX_ENV = "PZ_NAME_INDEX"

#: NCBI ranks that name a taxon of ours (NCBI's "kingdom" Metazoa is no WoRMS kingdom)
_RANKS = frozenset(ALL_RANKS) - {"kingdom", "subkingdom", "infrakingdom"}
#: NCBI top node → the WoRMS kingdoms a curated anchor may belong to
_KINGDOMS = {
    "Metazoa": {"Animalia"},
    "Bacteria": {"Bacteria"},
}
_EUKARYOTE_KINGDOMS = {"Chromista", "Protozoa", "Plantae", "Fungi"}


@dataclass(frozen=True, slots=True)
class Entry:
    """One NCBI node."""

    taxid: int
    parent: int
    rank: str  #: NCBI rank ("no_rank", "clade", … when none of ours)
    name: str


@dataclass(frozen=True, slots=True)
class Graft:
    """A name the curated backbone does not list, placed under it: an index entry, or a name
    kept from the label itself by nomenclature (`entry` None: a species no index knows)."""

    entry: Entry | None
    anchor: Taxon  #: nearest curated ancestor (accepted)
    lineage: Lineage
    below: tuple[Entry, ...]  #: NCBI nodes between the anchor and the entry, top-down
    taxon: Taxon  #: a stand-in taxon for the resolver (rank ours, parent the anchor)
    #: every name of the entry's NCBI lineage (lower-case), for deciding homonyms by context
    ncbi_names: frozenset[str] = frozenset()


_SHARED: dict[Path, NameIndex] = {}


class NameIndex:
    """NCBI nodes by taxid and by name, read from a gzipped TSV on first use.

    >>> idx = NameIndex.default()
    >>> [e.rank for e in idx.lookup("Calanus")]                       # doctest: +SKIP
    ['genus']
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._nodes: dict[int, Entry] | None = None
        self._by_name: dict[str, list[int]] = {}
        self.source = ""

    @classmethod
    def default(cls) -> NameIndex | None:
        """The index named by `PZ_NAME_INDEX`, else the packaged one (None if neither); one
        instance per file, shared by every resolver (it is read-only once loaded)."""
        env = os.environ.get(INDEX_ENV)
        if env:
            path = Path(env).expanduser()
            if not path.is_file():
                raise FileNotFoundError(f"{INDEX_ENV}={env}: no such name index")
        elif PACKAGED_INDEX.is_file():
            path = PACKAGED_INDEX
        else:
            return None
        return _SHARED.setdefault(path.resolve(), cls(path))

    @property
    def loaded(self) -> bool:
        return self._nodes is not None

    def _load(self) -> dict[int, Entry]:
        if self._nodes is None:
            nodes: dict[int, Entry] = {}
            by_name: dict[str, list[int]] = {}
            with gzip.open(self.path, "rt", encoding="utf-8") as fh:
                for n, line in enumerate(fh, start=1):
                    if line.startswith("#"):
                        if not self.source:
                            self.source = line[1:].split(";", 1)[0].strip()
                        continue
                    try:
                        taxid, parent, rank, name = line.rstrip("\n").split("\t")
                        e = Entry(int(taxid), int(parent), rank, name)
                    except ValueError:
                        raise ValueError(
                            f"{self.path}: line {n}: expected taxid, parent, rank, name"
                            " (tab-separated)"
                        ) from None
                    nodes[e.taxid] = e
                    if rank in _RANKS:
                        by_name.setdefault(name.lower(), []).append(e.taxid)
            self._nodes, self._by_name = nodes, by_name
        return self._nodes

    def __len__(self) -> int:
        return len(self._load())

    def lookup(self, name: str) -> list[Entry]:
        """Nodes named `name` (case-insensitive; several for a homonym)."""
        nodes = self._load()
        return [nodes[t] for t in self._by_name.get(norm(name), ())]

    def chain(self, entry: Entry) -> list[Entry]:
        """`entry` and its ancestors, bottom-up."""
        nodes = self._load()
        out = [entry]
        while out[-1].parent != out[-1].taxid and out[-1].parent in nodes:
            out.append(nodes[out[-1].parent])
        return out


def graft(backbone: Backbone, index: NameIndex, entry: Entry) -> Graft | None:
    """Place `entry` under its nearest curated ancestor, or None when no ancestor is known."""
    chain = index.chain(entry)
    kingdoms = next((_KINGDOMS[e.name] for e in chain if e.name in _KINGDOMS), _EUKARYOTE_KINGDOMS)
    for i, node in enumerate(chain[1:], start=1):
        listed = backbone.get(node.name)
        if listed is None:
            continue
        anchor = backbone.accepted(listed)
        base = backbone.lineage(anchor)
        if base.kingdom and base.kingdom not in kingdoms:
            continue  # a homonym in another kingdom (NCBI names are not WoRMS names)
        below = tuple(reversed(chain[1:i]))
        names = frozenset(e.name.lower() for e in chain)
        return _graft_below(entry, anchor, base, below, names)
    return None


def _graft_below(
    entry: Entry, anchor: Taxon, base: Lineage, below: tuple[Entry, ...], names: frozenset[str]
) -> Graft:
    values = dict(zip(RANKS, base.ranks(), strict=True))
    depth = RANK_DEPTH[anchor.rank]
    for node in (*below, entry):
        if node.rank in RANKS and RANK_DEPTH[node.rank] > depth and not values[node.rank]:
            values[node.rank] = node.name
    name = entry.name
    if entry.rank == "species" and values["genus"] and not name.startswith(values["genus"] + " "):
        # the genus is a curated synonym: the species moves into the accepted genus
        name = f"{values['genus']} {name.split(' ', 1)[1]}"
        values["species"] = name
    rank = entry.rank if entry.rank in _RANKS else ""
    lineage = living_lineage(values, name=name, rank=rank, plankton=base.plankton)
    taxon = Taxon(name, rank or anchor.rank, anchor.name)
    return Graft(entry, anchor, lineage, below, taxon, names)
