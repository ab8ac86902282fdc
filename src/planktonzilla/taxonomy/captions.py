"""Text derived from a lineage, for CLIP-style training and zero-shot prompts.

- `lineage_caption`: the lower-case, space-joined lineage used as training text by the
  published plankton CLIP models: kingdom … genus, then the species *epithet* (the species
  field holds the binomial, whose genus is already in the caption):
  ``animalia arthropoda copepoda calanoida calanidae calanus finmarchicus``.
- `bioclip_caption`: BioCLIP's format, names in their own case:
  ``a photo of Animalia Arthropoda Copepoda Calanoida Calanidae Calanus finmarchicus.``
- `ranked_caption`: every rank tagged, the species as its binomial:
  ``kingdom Animalia phylum Arthropoda … genus Calanus species Calanus finmarchicus``.

Placeholders that only keep ranks contiguous ("X incertae sedis") are left out. An object that
is no taxon (detritus, bubble, Biota) is captioned by its name.
"""

from __future__ import annotations

from planktonzilla.taxonomy.lineage import RANKS, Lineage

_PLACEHOLDER = " incertae sedis"


def _words(lineage: Lineage) -> list[str]:
    words = []
    for rank, value in zip(RANKS, lineage.ranks(), strict=True):
        if not value or value.endswith(_PLACEHOLDER):
            continue
        if rank == "species":
            genus, _, epithet = value.partition(" ")
            if genus == lineage.genus and epithet:
                value = epithet
        words.append(value)
    if not words and lineage.name:
        words.append(lineage.name)
    return words


def lineage_caption(lineage: Lineage, *, qualifier: bool = False) -> str:
    """Lower-case space-joined lineage (optionally followed by the qualifier, `_` → space).

    >>> lin = Lineage("Animalia", "Arthropoda", "Copepoda", "Calanoida", "Calanidae",
    ...               "Calanus", "Calanus finmarchicus")
    >>> lineage_caption(lin)
    'animalia arthropoda copepoda calanoida calanidae calanus finmarchicus'
    """
    words = _words(lineage)
    if qualifier and lineage.qualifier and lineage.qualifier != "full_body":
        words.append(lineage.qualifier.replace("_", " "))
    return " ".join(words).lower()


def bioclip_caption(lineage: Lineage) -> str:
    """BioCLIP's taxonomic caption.

    >>> lin = Lineage("Animalia", "Arthropoda", "Copepoda", "Calanoida", "Calanidae",
    ...               "Calanus", "Calanus finmarchicus")
    >>> bioclip_caption(lin)
    'a photo of Animalia Arthropoda Copepoda Calanoida Calanidae Calanus finmarchicus.'
    """
    return f"a photo of {' '.join(_words(lineage))}."


def ranked_caption(lineage: Lineage) -> str:
    """Each rank named before its value.

    >>> ranked_caption(Lineage("Animalia", "Chaetognatha", name="Chaetognatha", rank="phylum"))
    'kingdom Animalia phylum Chaetognatha'
    """
    parts = [
        f"{rank} {value}"
        for rank, value in zip(RANKS, lineage.ranks(), strict=True)
        if value and not value.endswith(_PLACEHOLDER)
    ]
    if not parts and lineage.name:
        parts.append(lineage.name)
    return " ".join(parts)
