"""The `Lineage` record and the controlled vocabularies it uses.

A lineage holds the seven Linnaean ranks (kingdom … species) as a *contiguous prefix*: a rank
is filled only if every rank above it is. `species` holds the binomial ("Calanus finmarchicus").
`name`/`rank` are the accepted name the label resolved to and its own rank, which may be an
intermediate one (e.g. "Crustacea", subphylum) or empty for objects that are not a taxon
(detritus, bubbles, an unidentified living thing).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

#: The seven ranks a lineage carries, top-down.
RANKS: tuple[str, ...] = ("kingdom", "phylum", "class", "order", "family", "genus", "species")

#: Every rank the backbone may use, top-down (WoRMS ranks, lower-case).
ALL_RANKS: tuple[str, ...] = (
    "kingdom",
    "subkingdom",
    "infrakingdom",
    "phylum",
    "subphylum",
    "infraphylum",
    "superclass",
    "class",
    "subclass",
    "infraclass",
    "superorder",
    "order",
    "suborder",
    "infraorder",
    "superfamily",
    "family",
    "subfamily",
    "tribe",
    "genus",
    "species",
)
RANK_DEPTH: dict[str, int] = {r: i for i, r in enumerate(ALL_RANKS)}

#: What an object is, before any taxonomy.
ROOT_CLASSES: tuple[str, ...] = ("living", "detritus", "artefact", "inert")

#: Controlled vocabulary for `Lineage.qualifier` ("" = no qualifier: a non-living object, or a
#: living one where nothing is said beyond the taxon).
QUALIFIERS: tuple[str, ...] = (
    "full_body",
    "larvae",
    "juvenile",
    "egg",
    "like",
    "part",
    "part_head",
    "part_tail",
    "part_leg",
    "part_carapace",
    "part_tentacle",
    "part_trunk",
    "part_skin",
    "molt",
    "dead",
    "badfocus",
    "mix",
    "multiple",
    "parasite",
    "colony",
)


@dataclass(frozen=True, slots=True)
class Lineage:
    """A harmonized taxon (or non-taxon category) with its flags.

    >>> lin = Lineage(kingdom="Animalia", phylum="Arthropoda", class_="Copepoda",
    ...               name="Copepoda", rank="class", root_class="living", plankton=True)
    >>> lin.ranks()
    ('Animalia', 'Arthropoda', 'Copepoda', '', '', '', '')
    """

    kingdom: str = ""
    phylum: str = ""
    class_: str = ""
    order: str = ""
    family: str = ""
    genus: str = ""
    species: str = ""
    name: str = ""
    rank: str = ""
    aphia_id: int | None = None
    root_class: str = ""
    plankton: bool | None = None
    qualifier: str = ""

    def ranks(self) -> tuple[str, ...]:
        """The seven rank values, top-down ("" where unknown)."""
        return (
            self.kingdom,
            self.phylum,
            self.class_,
            self.order,
            self.family,
            self.genus,
            self.species,
        )

    def get(self, rank: str) -> str:
        """Value at a Linnaean rank ("class", not "class_")."""
        return getattr(self, "class_" if rank == "class" else rank)

    @property
    def deepest_rank(self) -> str:
        """The deepest of the seven ranks that is filled ("" if none)."""
        deepest = ""
        for rank, value in zip(RANKS, self.ranks(), strict=True):
            if value:
                deepest = rank
        return deepest

    def is_contiguous(self) -> bool:
        """True when the filled ranks form a prefix (no holes)."""
        values = self.ranks()
        depth = sum(1 for v in values if v)
        return all(values[:depth])

    def with_flags(self, **changes) -> Lineage:
        return replace(self, **changes)

    def to_dict(self) -> dict:
        """Column-named dict ("class", not "class_")."""
        d = asdict(self)
        d["class"] = d.pop("class_")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Lineage:
        names = {f.name for f in fields(cls)}
        kwargs = {}
        for key, value in d.items():
            key = "class_" if key == "class" else key
            if key in names:
                kwargs[key] = value
        return cls(**kwargs)


def living_lineage(
    values: dict[str, str],
    *,
    name: str,
    rank: str,
    aphia_id: int | None = None,
    plankton: bool | None = None,
) -> Lineage:
    """A living lineage from rank values (`{"order": "Calanoida", …}`). A missing major rank
    between two known ones is filled with "<parent> incertae sedis" so that the ranks stay a
    contiguous prefix."""
    deepest = max((i for i, r in enumerate(RANKS) if values.get(r)), default=-1)
    filled: list[str] = []
    for r in RANKS[: deepest + 1]:
        v = values.get(r, "")
        if not v:
            above = next((x for x in reversed(filled) if x), "")
            v = f"{above.removesuffix(' incertae sedis')} incertae sedis" if above else ""
        filled.append(v)
    filled += [""] * (len(RANKS) - len(filled))
    return Lineage(
        *filled,
        name=name,
        rank=rank,
        aphia_id=aphia_id,
        root_class="living",
        plankton=True if plankton is None else plankton,
    )
