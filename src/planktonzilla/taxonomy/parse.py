"""Turn a raw class label into its parts by rules: the words that may name a taxon, a
qualifier, a non-living category, a life stage, and the connectors between names.

The parser knows no taxa (the resolver matches words against the backbone); it knows the
conventions of plankton labels:

- EcoTaxa `X<Y` (X under Y): `part<Crustacea`, `like<Copepoda`, `badfocus<artefact`, `t001`;
- EcoTaxa-derived folder names where `_` plays the role of `<`: `egg_Actinopterygii`;
- NDSB compound names, general to specific: `copepod_calanoid_eggs`, `chaetognath_non_sagitta`;
- `Genus_sp`, `Genus_spp.`, `Genus cf. species`, `A_b_C_d` (two species), `X_or_Y`, `X inter. Y`;
- instrument prefixes and group codes: `LClass_Cy.1.Trichodesmium`, `LClass_32.1Adult_Fish`;
- separators, camelCase and case noise: `copepod_calanoid_frillyAntennae`, `PARAMECIUM  BURSARIA`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

# -- vocabularies (lower-case words) -----------------------------------------------------------

#: word → qualifier
QUALIFIER_WORDS: dict[str, str] = {
    "larva": "larvae",
    "larvae": "larvae",
    "larval": "larvae",
    "juvenile": "juvenile",
    "juveniles": "juvenile",
    "young": "juvenile",
    "juv": "juvenile",
    "egg": "egg",
    "eggs": "egg",
    "like": "like",
    "cf": "like",
    "aff": "like",
    "nr": "like",
    "maybe": "like",
    "possible": "like",
    "probable": "like",
    "doubt": "like",
    "doubts": "like",
    "part": "part",
    "parts": "part",
    "partial": "part",
    "piece": "part",
    "fragment": "part",
    "cut": "part",
    "comb": "part",
    "stem": "part",
    "nucleus": "part",
    "head": "part_head",
    "heads": "part_head",
    "tail": "part_tail",
    "tails": "part_tail",
    "trunk": "part_trunk",
    "leg": "part_leg",
    "legs": "part_leg",
    "tentacle": "part_tentacle",
    "tentacles": "part_tentacle",
    "skin": "part_skin",
    "skins": "molt",
    "bract": "part",
    "bracts": "part",
    "nectophore": "part",
    "nectophores": "part",
    "gonophore": "part",
    "gonophores": "part",
    "eudoxie": "full_body",
    "eudoxid": "full_body",
    "eudoxia": "full_body",
    "setae": "part",
    "dead": "dead",
    "empty": "molt",
    "carcass": "dead",
    "badfocus": "badfocus",
    "unfocused": "badfocus",
    "unfocussed": "badfocus",
    "blurry": "badfocus",
    "mix": "mix",
    "mixed": "mix",
    "multiple": "multiple",
    "several": "multiple",
    "parasite": "parasite",
    "parasites": "parasite",
    "parasitized": "parasite",
    "infected": "parasite",
    "colony": "colony",
    "colonies": "colony",
    "colonial": "colony",
    "chain": "colony",
    "chains": "colony",
    "whole": "full_body",
    "spicule": "part",
    "spicules": "part",
    "cluster": "colony",
    "interaction": "mix",
}

#: life-stage word → (qualifier, taxa it implies, first found in the backbone wins)
STAGES: dict[str, tuple[str, tuple[str, ...]]] = {
    "nauplius": ("larvae", ("Crustacea",)),
    "nauplii": ("larvae", ("Crustacea",)),
    "metanauplius": ("larvae", ("Crustacea",)),
    "metanauplii": ("larvae", ("Crustacea",)),
    "copepodite": ("juvenile", ("Copepoda",)),
    "copepodites": ("juvenile", ("Copepoda",)),
    "zoea": ("larvae", ("Decapoda",)),
    "zoeae": ("larvae", ("Decapoda",)),
    "protozoea": ("larvae", ("Decapoda",)),
    "megalopa": ("larvae", ("Decapoda",)),
    "megalopae": ("larvae", ("Decapoda",)),
    "calyptopsis": ("larvae", ("Euphausiacea",)),
    "calyptopis": ("larvae", ("Euphausiacea",)),
    "furcilia": ("larvae", ("Euphausiacea",)),
    "cypris": ("larvae", ("Cirripedia", "Thecostraca")),
    "cyprid": ("larvae", ("Cirripedia", "Thecostraca")),
    "pluteus": ("larvae", ("Echinodermata",)),
    "plutei": ("larvae", ("Echinodermata",)),
    "echinopluteus": ("larvae", ("Echinoidea", "Echinodermata")),
    "ophiopluteus": ("larvae", ("Ophiuroidea", "Echinodermata")),
    "bipinnaria": ("larvae", ("Asteroidea", "Echinodermata")),
    "brachiolaria": ("larvae", ("Asteroidea", "Echinodermata")),
    "auricularia": ("larvae", ("Holothuroidea", "Echinodermata")),
    "tornaria": ("larvae", ("Enteropneusta", "Hemichordata")),
    "veliger": ("larvae", ("Mollusca",)),
    "veligers": ("larvae", ("Mollusca",)),
    "trochophore": ("larvae", ("Annelida",)),
    "trochophores": ("larvae", ("Annelida",)),
    "trochophora": ("larvae", ("Annelida",)),
    "cyphonaute": ("larvae", ("Bryozoa",)),
    "cyphonautes": ("larvae", ("Bryozoa",)),
    "actinula": ("larvae", ("Hydrozoa",)),
    "planula": ("larvae", ("Cnidaria",)),
    "ephyra": ("larvae", ("Scyphozoa",)),
    "ephyrae": ("larvae", ("Scyphozoa",)),
    "leptocephalus": ("larvae", ("Elopomorpha", "Actinopterygii")),
    "leptocephali": ("larvae", ("Elopomorpha", "Actinopterygii")),
    "siphonula": ("larvae", ("Siphonophorae",)),
    "pilidium": ("larvae", ("Nemertea",)),
    "house": ("part", ("Appendicularia",)),
    "houses": ("part", ("Appendicularia",)),
    "polyp": ("", ("Cnidaria",)),
    "puff": ("colony", ("Trichodesmium",)),
    "tuff": ("colony", ("Trichodesmium",)),
    "tuft": ("colony", ("Trichodesmium",)),
    "bowtie": ("colony", ("Trichodesmium",)),
    "frustule": ("dead", ("Bacillariophyceae",)),
    "endostyle": ("part", ("Tunicata",)),
    "molt": ("molt", ("Crustacea",)),
    "molts": ("molt", ("Crustacea",)),
    "moult": ("molt", ("Crustacea",)),
    "moults": ("molt", ("Crustacea",)),
    "exuviae": ("molt", ("Crustacea",)),
    "exuvia": ("molt", ("Crustacea",)),
    "carapace": ("part_carapace", ("Crustacea",)),
    "cirrus": ("part_leg", ("Cirripedia",)),
    "cirri": ("part_leg", ("Cirripedia",)),
    "ovigerous": ("", ("Crustacea",)),
    "heterocyte": ("part", ("Nostocales", "Cyanobacteria")),
    "heterocytes": ("part", ("Nostocales", "Cyanobacteria")),
    "heterocyst": ("part", ("Nostocales", "Cyanobacteria")),
    "heterocysts": ("part", ("Nostocales", "Cyanobacteria")),
    "pollen": ("part", ("Tracheophyta", "Plantae")),
    "shell": ("part", ("Mollusca",)),
    "shells": ("part", ("Mollusca",)),
    "zooplankton": ("", ("Animalia",)),
}

#: non-living word → (category, root_class); higher `CATEGORY_PRIORITY` wins when several.
CATEGORY_WORDS: dict[str, tuple[str, str]] = {
    "detritus": ("detritus", "detritus"),
    "detrital": ("detritus", "detritus"),
    "snow": ("detritus", "detritus"),
    "aggregate": ("detritus", "detritus"),
    "aggregates": ("detritus", "detritus"),
    "fluffy": ("detritus", "detritus"),
    "dirt": ("detritus", "detritus"),
    "dirty": ("detritus", "detritus"),
    "junk": ("detritus", "detritus"),
    "feces": ("feces", "detritus"),
    "faeces": ("feces", "detritus"),
    "fecal": ("feces", "detritus"),
    "faecal": ("feces", "detritus"),
    "pellet": ("feces", "detritus"),
    "pellets": ("feces", "detritus"),
    "fiber": ("fiber", "inert"),
    "fibre": ("fiber", "inert"),
    "fibers": ("fiber", "inert"),
    "fibres": ("fiber", "inert"),
    "darksphere": ("dark sphere", "detritus"),
    "bubble": ("bubble", "artefact"),
    "bubbles": ("bubble", "artefact"),
    "badfocus": ("badfocus", "artefact"),
    "unfocused": ("badfocus", "artefact"),
    "unfocussed": ("badfocus", "artefact"),
    "artefact": ("artefact", "artefact"),
    "artefacts": ("artefact", "artefact"),
    "artifact": ("artefact", "artefact"),
    "artifacts": ("artefact", "artefact"),
    "shadow": ("artefact", "artefact"),
    "reflection": ("artefact", "artefact"),
    "streak": ("artefact", "artefact"),
    "ghost": ("artefact", "artefact"),
    "plastic": ("plastic", "inert"),
    "plastics": ("plastic", "inert"),
    "microplastic": ("plastic", "inert"),
    "mineral": ("mineral", "inert"),
    "minerals": ("mineral", "inert"),
    "sand": ("mineral", "inert"),
    "sediment": ("mineral", "inert"),
    "crystal": ("mineral", "inert"),
    "crystals": ("mineral", "inert"),
    "cristal": ("mineral", "inert"),
    "bead": ("bead", "inert"),
    "beads": ("bead", "inert"),
    "bad": ("artefact", "artefact"),
    "moving": ("artefact", "artefact"),
    "turbid": ("artefact", "artefact"),
    "border": ("artefact", "artefact"),
    "edge": ("artefact", "artefact"),
    "duplicate": ("artefact", "artefact"),
}
#: multi-word non-living terms (normalized, space-joined)
CATEGORY_PHRASES: dict[str, tuple[str, str]] = {
    "marine snow": ("detritus", "detritus"),
    "fecal pellet": ("feces", "detritus"),
    "fecal pellets": ("feces", "detritus"),
    "faecal pellets": ("feces", "detritus"),
    "air bubble": ("bubble", "artefact"),
    "bad focus": ("badfocus", "artefact"),
    "out of focus": ("badfocus", "artefact"),
    "dark sphere": ("dark sphere", "detritus"),
    "ball bearing": ("bead", "inert"),
    "vertical line": ("artefact", "artefact"),
}
CATEGORY_PRIORITY = (
    "detritus",
    "artefact",
    "dark sphere",
    "badfocus",
    "bubble",
    "feces",
    "fiber",
    "bead",
    "mineral",
    "plastic",
)
#: category word that, next to a taxon, becomes a qualifier instead
CATEGORY_AS_QUALIFIER = {"aggregate": "colony", "aggregates": "colony", "badfocus": "badfocus"}

WEAK_REASON = "unspecified 'other' category"
TEMPORARY_REASON = "temporary category"
#: word → reason the label names nothing definite (used only when no taxon is found)
UNRESOLVED_WORDS: dict[str, str] = {
    "unknown": "unidentified object",
    "unknowns": "unidentified object",
    "unkn": "unidentified object",
    "unidentified": "unidentified object",
    "unclassified": "unidentified object",
    "undetermined": "unidentified object",
    "undet": "unidentified object",
    "indet": "unidentified object",
    "unid": "unidentified object",
    "doubt": "doubtful identification",
    "doubts": "doubtful identification",
    "othertocheck": "category awaiting checking",
    "tocheck": "category awaiting checking",
    "temp": TEMPORARY_REASON,
    "temporary": TEMPORARY_REASON,
    "raw": "unsorted images",
    "lraw": "unsorted images",
    "missed": "images the instrument's classifier missed, not an object class",
    "other": WEAK_REASON,
    "misc": WEAK_REASON,
    "miscellaneous": WEAK_REASON,
}

#: words meaning "a living thing" (used only when no taxon is found)
LIVING_WORDS = {
    "living",
    "alive",
    "biota",
    "organism",
    "organisms",
    "plankton",
    "phytoplankton",
    "protist",
    "protists",
    "protista",
    "protozoa",
    "flagellate",
    "flagellates",
    "spore",
    "spores",
    "cyst",
    "cysts",
    "cell",
    "cells",
    "amoeba",
    "eukaryota",
    "eukaryote",
    "eukaryotes",
    "gelatinous",
}

#: connector word → how the names around it relate
CONNECTORS = {
    "or": "or",
    "and": "or",
    "+": "or",
    "inter": "host",
    "with": "host",
    "on": "host",
    "epibiont": "host",
    "feeding": "host",
    "feeder": "host",
    "mix": "or",
}
NEGATIONS = {"non", "not", "no", "without"}

#: descriptive words that never name a taxon
NOISE = {
    "sp",
    "spp",
    "ssp",
    "var",
    "f",
    "etc",
    "of",
    "the",
    "a",
    "b",
    "c",
    "type",
    "morphotype",
    "shape",
    "big",
    "small",
    "large",
    "medium",
    "thin",
    "thick",
    "long",
    "short",
    "single",
    "general",
    "new",
    "old",
    "adult",
    "sideview",
    "side",
    "view",
    "top",
    "bottom",
    "dark",
    "light",
    "round",
    "elongated",
    "straight",
    "curve",
    "slight",
    "deep",
    "body",
    "very",
    "naked",
    "others",
    "stick",
    "sticks",
    "dot",
    "com",
    "stickers",
    "filamentous",
    "clear",
    "s",
    "string",
    "tube",
    "multi",
    "polar",
    "sac",
}
#: words that follow a genus in labels without being its epithet: sex, view, state, stage
DESCRIPTORS = {
    "female",
    "females",
    "male",
    "males",
    "stage",
    "stages",
    "form",
    "forms",
    "group",
    "groups",
    "complex",
    "dorsal",
    "ventral",
    "lateral",
    "frontal",
    "damaged",
    "broken",
    "crushed",
    "unsure",
    "various",
    "mature",
    "immature",
    "gravid",
    "spent",
    "alive",
    "preserved",
    "elongate",
    "spherical",
    "oval",
    "double",
    "attached",
    "free",
}
#: endings of Latin and Latinised epithets (finmarchicus, hamata, digitale, ruber, bijuga,
#: sowerbii, flos-aquae, leidyi, maenas, monodon, gigas, carpio, dispar, chrysops): 99 % of
#: the index's species epithets
_EPITHET_ENDINGS = (
    *("a", "e", "i", "o", "u", "y", "us", "um", "is", "es", "os", "ys", "as", "or", "er"),
    *("ar", "ir", "x", "ns", "ps", "on", "an", "en"),
)
#: endings of English words, never of an epithet (dorsal, damaged, floating, clearly)
_ENGLISH_ENDINGS = ("al", "ed", "ing", "ly", "ness")


def looks_like_epithet(word: str) -> bool:
    """A lower-case word that may be a species epithet after a genus (`zzyzxica` yes,
    `female`, `dorsal`, `damaged` no): Latin ending, no English ending, no descriptor."""
    low = word.lower()
    last = low.rsplit("-", 1)[-1]
    return (
        len(low) >= 4
        and low.replace("-", "").isalpha()
        and low not in DESCRIPTORS
        and last.endswith(_EPITHET_ENDINGS)
        and not last.endswith(_ENGLISH_ENDINGS)
    )


NOISE_PATTERN = re.compile(r"^(?:\d.*|.*\d.*|type\w*|shape\w*|morphotype\w*|sp\d+)$")

_TEMPORARY = re.compile(r"^t\d{3}$", re.IGNORECASE)
_PREFIX = re.compile(r"^LClass_", re.IGNORECASE)
_GROUP_CODE = re.compile(r"^(?:[A-Z][A-Za-z]?\.)?(?:\d+(?:\.\d+)*\.?)?(?=[A-Za-z])")
_CAMEL = re.compile(r"(?<=[a-z])(?=[A-Z])|(?<=[A-Za-z])(?=\d)|(?<=\d)(?=[A-Za-z])")
_LIKE_SUFFIX = re.compile(r"[-_ ]like(?![a-z])", re.IGNORECASE)
_SPLIT = re.compile(r"[\s_,;/()\[\]]+")
#: separators of a lineage path (`Biota>Animalia>…`, `Class,Order,Family,Genus,Species`,
#: folder paths); EcoTaxa's `<` (child<parent) is read by `parse_label` itself
_PATH_SEPARATORS = re.compile(r"\s*(?:[>|;/,]|\s-\s)\s*")
#: placeholders for "not identified at this rank": `Ge._unk` (genus unknown), `Sp._unk`,
#: `sp.`, `spp.`, `sp2`, `indet.`, `unid.`, `n.i.`
_PLACEHOLDER = re.compile(
    r"(?<![A-Za-z])(?:(?:ge|gen|sp|spp|fam)\.?_?unk|spp?\.?\d*|indet|unid|n\.\s?i)\.?(?![A-Za-z])",
    re.IGNORECASE,
)


@dataclass(frozen=True, slots=True)
class ParsedLabel:
    """What a raw label says, before any taxon lookup."""

    raw: str
    text: str  #: cleaned label: prefix and group codes removed
    words: tuple[str, ...]  #: words that may name a taxon (main part, in order)
    parent_words: tuple[str, ...] = ()  #: words of the EcoTaxa parent (`X<Y` → Y)
    qualifier: str = ""
    category: str = ""  #: non-living category ("detritus", "bubble", …)
    category_root: str = ""  #: its root class (detritus | artefact | inert)
    stages: tuple[str, ...] = ()  #: life-stage words, each implying a taxon
    living: bool = False  #: says "a living thing" without naming it
    unresolved: str = ""  #: reason the label names nothing definite
    connector: str = ""  #: "or" (alternatives), "host" (X with/on Y) or ""
    category_words: tuple[str, ...] = ()  #: the non-living words found
    placeholder: str = ""  #: `sp.`, `Ge._unk`, `indet.`…: not identified below the name


def split_path(raw: str) -> list[str]:
    """The segments of a lineage path, top-down (`Copepoda>Calanoida` → two), or `[raw]`
    when the label is no path. Labels with EcoTaxa's `<` are never paths."""
    if "<" in raw:
        return [raw]
    parts = [p.strip() for p in _PATH_SEPARATORS.split(raw.strip())]
    parts = [p for p in parts if p]
    return parts if len(parts) > 1 else [raw]


def find_placeholder(text: str) -> str:
    """The placeholder a label carries (`sp.`, `Ge._unk`, …), or ""."""
    m = _PLACEHOLDER.search(text)
    return m.group(0) if m else ""


def clean_label(raw: str) -> str:
    """Remove instrument prefixes and group codes (`LClass_Pa.35.Marine_snow` →
    `Marine_snow`) and surrounding whitespace."""
    text = raw.strip()
    if _PREFIX.match(text):
        text = _PREFIX.sub("", text)
        text = _GROUP_CODE.sub("", text, count=1)
    return text


def split_words(text: str) -> list[str]:
    """Split on separators, `.`, `+`, camelCase and letter/digit boundaries; keep hyphenated
    words whole (`Pseudo-nitzschia`) except a `-like` suffix."""
    text = _LIKE_SUFFIX.sub(" like", text)
    text = text.replace("+", " + ").replace(".", " ")
    words = []
    for chunk in _SPLIT.split(text):
        chunk = chunk.strip("-'\"")
        if not chunk:
            continue
        for w in _CAMEL.split(chunk) if not chunk.isupper() else [chunk]:
            w = w.strip("-")
            if w:
                words.append(w)
    return words


def parse_label(raw: str) -> ParsedLabel:
    """Parse a raw label.

    >>> p = parse_label("copepod_calanoid_eggs")
    >>> p.words, p.qualifier
    (('copepod', 'calanoid'), 'egg')
    >>> parse_label("part<Crustacea").parent_words, parse_label("part<Crustacea").qualifier
    (('Crustacea',), 'part')
    >>> parse_label("badfocus<artefact").category
    'badfocus'
    """
    text = clean_label(raw)
    if _TEMPORARY.match(text):
        return ParsedLabel(raw, text, (), unresolved="temporary category")
    main, _, parent = text.partition("<")
    placeholder = find_placeholder(main)
    if placeholder:
        main = _PLACEHOLDER.sub(" ", main)
    state = _State()
    words = state.scan(split_words(main))
    parent_words = state.scan(split_words(parent), is_parent=True)
    category, root = state.category()
    if category and (words or parent_words or state.stages):
        # a name beside a non-living word: "badfocus<Copepoda", "aggregate_Radiolaria"
        for w in state.category_words:
            if w in CATEGORY_AS_QUALIFIER and not state.qualifier:
                state.qualifier = CATEGORY_AS_QUALIFIER[w]
    return ParsedLabel(
        raw=raw,
        text=text,
        words=tuple(words),
        parent_words=tuple(parent_words),
        qualifier=state.qualifier,
        category=category,
        category_root=root,
        stages=tuple(state.stages),
        living=state.living,
        unresolved=state.unresolved,
        connector=state.connector,
        category_words=tuple(state.category_words),
        placeholder=placeholder,
    )


class _State:
    def __init__(self) -> None:
        self.qualifier = ""
        self.stages: list[str] = []
        self.category_words: list[str] = []
        self.categories: list[tuple[str, str]] = []
        self.living = False
        self.unresolved = ""
        self.connector = ""

    def set_qualifier(self, q: str) -> None:
        if not q:
            return
        if not self.qualifier or (self.qualifier == "part" and q.startswith("part_")):
            self.qualifier = q

    def scan(self, words: list[str], is_parent: bool = False) -> list[str]:
        names: list[str] = []
        words = self._split_compounds(words)
        lowered = [w.lower() for w in words]
        skip = False
        i = 0
        while i < len(words):
            w, low = words[i], lowered[i]
            if skip:
                skip = False
                i += 1
                continue
            pair = f"{low} {lowered[i + 1]}" if i + 1 < len(words) else ""
            triple = f"{pair} {lowered[i + 2]}" if i + 2 < len(words) else ""
            if triple in CATEGORY_PHRASES or pair in CATEGORY_PHRASES:
                phrase = triple if triple in CATEGORY_PHRASES else pair
                self.categories.append(CATEGORY_PHRASES[phrase])
                self.category_words.append(phrase)
                i += len(phrase.split())
                continue
            if (
                low.isascii()
                and low.isdigit()  # "¹".isdigit() is true, int("¹") fails
                and int(low) > 1
                and i + 1 < len(words)
                and lowered[i + 1]
                in (
                    "cells",
                    "cell",
                )
            ):
                self.set_qualifier("colony")
                i += 2
                continue
            if low in NEGATIONS:
                skip = True
            elif low in CONNECTORS:
                self.connector = self.connector or CONNECTORS[low]
                if low == "mix":
                    self.set_qualifier("mix")
            elif low in STAGES:
                self.stages.append(low)
                self.set_qualifier(STAGES[low][0])
            elif low in QUALIFIER_WORDS and not (low in CATEGORY_WORDS and is_parent):
                self.set_qualifier(QUALIFIER_WORDS[low])
                if low in CATEGORY_WORDS:
                    self.categories.append(CATEGORY_WORDS[low])
                    self.category_words.append(low)
                if low in UNRESOLVED_WORDS and not self.unresolved:
                    self.unresolved = UNRESOLVED_WORDS[low]
            elif low in CATEGORY_WORDS:
                self.categories.append(CATEGORY_WORDS[low])
                self.category_words.append(low)
            elif low in UNRESOLVED_WORDS or _TEMPORARY.match(low):
                if self.unresolved in ("", WEAK_REASON):
                    self.unresolved = UNRESOLVED_WORDS.get(low, "temporary category")
            elif low in LIVING_WORDS:
                self.living = True
            elif low in NOISE or NOISE_PATTERN.match(low) or (len(low) == 1 and not w.isupper()):
                pass
            else:
                names.append(w)
            i += 1
        return names

    def _split_compounds(self, words: list[str]) -> list[str]:
        """`copepoda-cut` → copepoda cut; `chainlarge` → chain large (two vocabulary words
        glued). Other hyphenated words stay whole (`Pseudo-nitzschia`): the resolver splits
        them when the backbone does not know them."""
        out: list[str] = []
        for w in words:
            parts = [p for p in w.split("-") if p]
            if len(parts) > 1:
                if any(_is_vocabulary(p) for p in parts):
                    out += parts
                    continue
            elif not _is_vocabulary(w):
                glued = _unglue(w)
                if glued:
                    out += glued
                    continue
            out.append(w)
        return out

    def category(self) -> tuple[str, str]:
        if not self.categories:
            return "", ""
        best = max(self.categories, key=lambda c: CATEGORY_PRIORITY.index(c[0]))
        return best


def _is_vocabulary(word: str) -> bool:
    low = word.lower()
    return (
        low in QUALIFIER_WORDS
        or low in STAGES
        or low in CATEGORY_WORDS
        or low in UNRESOLVED_WORDS
        or low in LIVING_WORDS
        or low in CONNECTORS
        or low in NOISE
    )


def _unglue(word: str) -> list[str] | None:
    """Two vocabulary words written as one (`chainlarge`, `lightsphere`), else None."""
    low = word.lower()
    if len(low) > 2 * _VOCAB_LONGEST:  # no two vocabulary words make it: stays linear
        return None
    for cut in range(3, len(low) - 2):
        if _is_vocabulary(low[:cut]) and _is_vocabulary(low[cut:]):
            return [word[:cut], word[cut:]]
    return None


_VOCAB = sorted(
    set(QUALIFIER_WORDS)
    | set(STAGES)
    | set(CATEGORY_WORDS)
    | set(UNRESOLVED_WORDS)
    | set(LIVING_WORDS)
    | {"trochophora"}
)
_VOCAB_LONGEST = max(
    len(w)
    for words in (QUALIFIER_WORDS, STAGES, CATEGORY_WORDS, UNRESOLVED_WORDS, LIVING_WORDS,
                  CONNECTORS, NOISE)
    for w in words
)  # fmt: skip
#: vocabulary by first letter (a typo keeps it: see `vocabulary_typo`)
_VOCAB_BY_START: dict[str, list[str]] = {}
for _word in _VOCAB:
    _VOCAB_BY_START.setdefault(_word[0], []).append(_word)


@functools.lru_cache(maxsize=1 << 16)
def vocabulary_typo(word: str) -> str | None:
    """The vocabulary word `word` is a typo of (`lavae` → `larvae`, `Doutbs` → `doubts`), or
    None: one edit (insertion, deletion, substitution or swap of neighbours) away, two for
    words over eight letters. Call only after the word failed to match a taxon: vocabulary
    words are short and a real name may be close to one."""
    low = word.lower()
    if len(low) < 5:
        return None
    limit = 1 if len(low) <= 8 else 2
    best = None
    letters = set(low)
    for cand in _VOCAB_BY_START.get(low[0], ()):
        # one edit changes the length by ≤ 1 and the letters present by ≤ 2
        if abs(len(cand) - len(low)) > limit or len(letters ^ set(cand)) > 2 * limit:
            continue
        d = _edit_distance(low, cand)
        if d <= limit and (best is None or d < best[0]):
            best = (d, cand)
    return best[1] if best else None


def _edit_distance(a: str, b: str) -> int:
    """Optimal string alignment distance (Damerau–Levenshtein without repeated edits)."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = a[i - 1] != b[j - 1]
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[-1]


def reparse(parsed: ParsedLabel, replacements: dict[str, str]) -> ParsedLabel:
    """Parse again with some words replaced (typo fixes found by the resolver)."""
    if not replacements:
        return parsed

    def fix(text: str) -> str:
        out = []
        for w in split_words(text):
            out.append(replacements.get(w, w))
        return " ".join(out)

    main, sep, parent = parsed.text.partition("<")
    fixed = fix(main) + (f"<{fix(parent)}" if sep else "")
    new = parse_label(fixed)
    return ParsedLabel(
        raw=parsed.raw,
        text=parsed.text,
        words=new.words,
        parent_words=new.parent_words,
        qualifier=new.qualifier,
        category=new.category,
        category_root=new.category_root,
        stages=new.stages,
        living=new.living,
        unresolved=new.unresolved,
        connector=new.connector,
        category_words=new.category_words,
        placeholder=new.placeholder,
    )
