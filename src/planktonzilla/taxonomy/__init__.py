"""Harmonized taxonomy: one lineage for every raw label.

>>> from planktonzilla.taxonomy import resolve_label, lineage_caption
>>> res = resolve_label("copepod_calanoid_eggs")          # doctest: +SKIP
>>> res.lineage.name, res.lineage.qualifier               # doctest: +SKIP
('Calanoida', 'egg')
>>> lineage_caption(res.lineage)                          # doctest: +SKIP
'animalia arthropoda copepoda calanoida'

Under the curated backbone, a broad name index (NCBI Taxonomy, ~10^5 plankton genera and
species, `NameIndex`) resolves names nobody listed, grafted under the curated upper ranks.

Conventions (WoRMS): seven ranks kingdom … species as a contiguous prefix, species as the
binomial; `root_class` living | detritus | artefact | inert; non-taxon objects are named by
their category ("detritus", "bubble", …) and a living object of no particular taxon by the
WoRMS root "Biota"; `qualifier` from `QUALIFIERS` ("full_body" for a whole organism).
"""

from planktonzilla.taxonomy.backbone import Backbone, Override, Taxon
from planktonzilla.taxonomy.captions import bioclip_caption, lineage_caption, ranked_caption
from planktonzilla.taxonomy.index import NameIndex
from planktonzilla.taxonomy.lineage import QUALIFIERS, RANKS, ROOT_CLASSES, Lineage
from planktonzilla.taxonomy.mapping import (
    check_mapping,
    load_mapping,
    mapping_table,
    mapping_version,
    resolve_labels,
)
from planktonzilla.taxonomy.parse import ParsedLabel, parse_label
from planktonzilla.taxonomy.resolve import COLUMNS, Resolution, Resolver, resolve_label

#: Version of the taxonomy (backbone conventions + mapping rules); bump when mappings change.
TAXONOMY_VERSION = "1.0.0"
taxonomy_version = TAXONOMY_VERSION

__all__ = [
    "COLUMNS",
    "QUALIFIERS",
    "RANKS",
    "ROOT_CLASSES",
    "TAXONOMY_VERSION",
    "Backbone",
    "Lineage",
    "NameIndex",
    "Override",
    "ParsedLabel",
    "Resolution",
    "Resolver",
    "Taxon",
    "bioclip_caption",
    "check_mapping",
    "lineage_caption",
    "load_mapping",
    "mapping_table",
    "mapping_version",
    "parse_label",
    "ranked_caption",
    "resolve_label",
    "resolve_labels",
    "taxonomy_version",
]
