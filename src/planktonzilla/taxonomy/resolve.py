"""Resolve a raw label to a `Lineage`: expert override, else parser + backbone rules, else
(optionally) WoRMS; or an explicit `unresolved` with a reason.

Provenance: `manual` (override), `backbone` (a scientific name found in the backbone),
`rule` (vernacular words, life stages, typo or abbreviation matching, non-living vocabulary,
common ancestor of alternatives), `worms` (the online client).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from planktonzilla.taxonomy.backbone import Backbone, Taxon, norm
from planktonzilla.taxonomy.lineage import QUALIFIERS, RANK_DEPTH, RANKS, ROOT_CLASSES, Lineage
from planktonzilla.taxonomy.parse import (
    STAGES,
    TEMPORARY_REASON,
    WEAK_REASON,
    ParsedLabel,
    parse_label,
    reparse,
    vocabulary_typo,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from planktonzilla.taxonomy.worms import WormsClient

#: Columns of a mapping table, in order.
COLUMNS: tuple[str, ...] = (
    "source",
    "raw_label",
    "kingdom",
    "phylum",
    "class",
    "order",
    "family",
    "genus",
    "species",
    "name",
    "rank",
    "aphia_id",
    "root_class",
    "plankton",
    "qualifier",
    "provenance",
    "confidence",
    "status",
    "reason",
)
PROVENANCES = ("manual", "backbone", "rule", "worms")
#: name used for a living object that is no particular taxon (WoRMS's root)
LIVING_ROOT = "Biota"
#: longest word taken as an abbreviation of a taxon name ("narco", "Crust", "Decap")
_MAX_ABBREVIATION = 6
#: ranks after which a lower-case word is an epithet, not a vocabulary typo
_EPITHET_AFTER = {"genus", "family", "subfamily", "tribe"}

_CONFIDENCE = {
    "exact": 0.95,
    "vernacular": 0.85,
    "stem": 0.85,
    "epithet": 0.85,
    "stage": 0.75,
    "fuzzy": 0.7,
    "prefix": 0.6,
}


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer for one raw label."""

    source: str
    raw_label: str
    lineage: Lineage
    provenance: str
    confidence: float
    status: str = "resolved"  #: resolved | unresolved
    reason: str = ""  #: why unresolved (or a note)

    @property
    def resolved(self) -> bool:
        return self.status == "resolved"

    def row(self) -> dict:
        d = {"source": self.source, "raw_label": self.raw_label}
        d.update(self.lineage.to_dict())
        d.update(
            provenance=self.provenance,
            confidence=round(self.confidence, 3),
            status=self.status,
            reason=self.reason,
        )
        return {c: d[c] for c in COLUMNS}


@dataclass(slots=True)
class _Match:
    taxon: Taxon
    how: str
    start: int
    end: int


@dataclass
class Resolver:
    """Resolves labels against one backbone (and optionally WoRMS), caching by label."""

    backbone: Backbone
    worms: WormsClient | None = None
    _cache: dict = field(default_factory=dict)

    def resolve(self, raw_label: str, source: str | None = None) -> Resolution:
        key = (source or "", raw_label)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(raw_label, source or "")
            self._cache[key] = hit
        return hit

    # -- the rules ----------------------------------------------------------------------------

    def _resolve(self, raw: str, source: str) -> Resolution:
        bb = self.backbone
        override = bb.override(source, raw)
        if override is not None:
            return self._from_override(raw, source, override)
        parsed = self._split_names(parse_label(raw))
        main, fixes = self._match(parsed.words)
        parent, parent_fixes = self._match(parsed.parent_words)
        fixes.update(parent_fixes)
        if fixes:  # typos of vocabulary words ("lavae"): parse again with them fixed
            parsed = self._split_names(reparse(parsed, fixes))
            main, _ = self._match(parsed.words)
            parent, _ = self._match(parsed.parent_words)

        taxon, how, note, mixed = self._choose(parsed, main, parent)
        if taxon is None and parsed.stages:
            taxon, how = self._stage_taxon(parsed.stages), "stage"
        if taxon is None and self.worms is not None and parsed.words:
            found = self._from_worms(raw, source, parsed)
            if found is not None:
                return found
        if taxon is not None:
            lin = bb.lineage(taxon)
            qualifier = parsed.qualifier or ("mix" if mixed else "full_body")
            lin = lin.with_flags(qualifier=qualifier)
            provenance = "backbone" if how == "exact" else "rule"
            confidence = _CONFIDENCE.get(how, 0.8)
            if note:
                confidence = min(confidence, 0.8)
            return Resolution(source, raw, lin, provenance, confidence, reason=note)
        if parsed.category:
            lin = Lineage(name=parsed.category, root_class=parsed.category_root, plankton=False)
            return Resolution(source, raw, lin, "rule", 0.9)
        unmatched = [w for w in parsed.words if len(w) > 1]
        weak = parsed.unresolved in ("", WEAK_REASON, TEMPORARY_REASON)
        if parsed.living or (parsed.qualifier and not unmatched and weak):
            lin = Lineage(
                name=LIVING_ROOT, root_class="living", plankton=True, qualifier=parsed.qualifier
            )
            return Resolution(source, raw, lin, "rule", 0.6)
        if parsed.unresolved and (not unmatched or not weak):
            reason = parsed.unresolved  # "square unknown": the label says it is unidentified
        elif unmatched:
            reason = f"no taxon or category recognised in {' '.join(unmatched)!r}"
        else:
            reason = parsed.unresolved or "no taxon or category recognised"
        return Resolution(source, raw, Lineage(), "rule", 0.0, "unresolved", reason)

    def _split_names(self, parsed: ParsedLabel) -> ParsedLabel:
        """`Dolichospermum-Anabaenopsis` (unknown as one name, parts capitalized) → two
        alternative names; `Pseudo-Nitzschia` stays whole because the backbone knows it."""
        words, split = [], False
        for w in parsed.words:
            parts = [p for p in w.split("-") if p]
            if (
                sum(p[:1].isupper() for p in parts) > 1
                and parts[0][:1].isupper()
                and self.backbone.find(w) is None
            ):
                words += parts
                split = True
            else:
                words.append(w)
        if not split:
            return parsed
        return dataclasses.replace(parsed, words=tuple(words), connector=parsed.connector or "or")

    def _choose(
        self, parsed: ParsedLabel, main: list[_Match], parent: list[_Match]
    ) -> tuple[Taxon | None, str, str, bool]:
        """(taxon, how it was found, note, whether the label names several organisms)."""
        bb = self.backbone
        note = ""
        mixed = parsed.connector == "host"
        # prefer scientific names over vernacular words when they disagree
        picked = _consistent(bb, main)
        taxon, how = (picked.taxon, picked.how) if picked else (None, "")
        if picked is not None and len(main) > 1 and parsed.connector == "or":
            # "Crust.+Decap": the union of alternatives on one line is the shallowest
            taxon = min(main, key=lambda m: RANK_DEPTH[m.taxon.rank]).taxon
        if picked is not None and any(
            m.how in ("vernacular", "stem") and m.start > picked.start and m.taxon != picked.taxon
            for m in main
        ):
            mixed = True  # "Chaetoceros_pennate": a common word after a name is another organism
        if len(main) > 1 and picked is None:
            alternatives = [m for m in main if m.how not in ("prefix",)] or main
            ranks = {m.taxon.rank for m in alternatives}
            if parsed.connector == "or" or parsed.qualifier == "mix" or len(ranks) == 1:
                ancestor = bb.common_ancestor(m.taxon for m in alternatives)
                if ancestor is not None:
                    taxon, how = ancestor, "exact"
                    note = "common ancestor of " + ", ".join(m.taxon.name for m in alternatives)
                    mixed = True
            if taxon is None:  # host first: "Rhizosolenia inter. Richelia", "X with Y"
                taxon, how = alternatives[0].taxon, alternatives[0].how
        top_parent = _consistent(bb, parent)
        if top_parent is not None:
            if taxon is None:
                taxon, how = top_parent.taxon, top_parent.how
            elif not bb.is_ancestor(top_parent.taxon, taxon):
                # `X<Y` with X not under Y: X is a morphological category named like a taxon
                note = f"{taxon.name} is not under {top_parent.taxon.name}"
                taxon, how = top_parent.taxon, top_parent.how
        if taxon is not None and parsed.stages:
            implied = self._stage_taxon(parsed.stages)
            if implied is not None and bb.is_ancestor(taxon, implied):
                taxon = implied  # "echinoderm_larva_seastar_bipinnaria" → Asteroidea
        return taxon, how, note, mixed

    def _stage_taxon(self, stages: Iterable[str]) -> Taxon | None:
        found = []
        for stage in stages:
            for name in STAGES[stage][1]:
                t = self.backbone.find(name)
                if t is not None:
                    found.append(t)
                    break
        if not found:
            return None
        deepest = max(found, key=lambda t: RANK_DEPTH[t.rank])
        return deepest if all(self.backbone.is_ancestor(t, deepest) for t in found) else found[0]

    def _match(self, words: tuple[str, ...] | list[str]) -> tuple[list[_Match], dict[str, str]]:
        """Find taxa among words, longest spans first."""
        bb = self.backbone
        out: list[_Match] = []
        fixes: dict[str, str] = {}
        words = list(words)
        i = 0
        while i < len(words):
            hit = None
            for span in (3, 2):
                if i + span > len(words):
                    continue
                phrase = " ".join(words[i : i + span])
                t = bb.get(phrase)
                if t is not None:
                    hit = _Match(bb.accepted(t), "exact", i, i + span)
                elif (v := self._vernacular(phrase)) is not None:
                    hit = _Match(v, "vernacular", i, i + span)
                if hit:
                    break
            if hit is None and i + 1 < len(words):
                hit = self._abbreviated_species(words[i], words[i + 1], i)
            if hit is None:
                hit = self._word(words[i], i)
            if hit is not None and hit.taxon.rank != "species" and hit.end < len(words):
                # "Creseidae acicula": an epithet after a genus or family
                species = self._epithet_under(hit.taxon, words[hit.end])
                if species is None and hit.taxon.rank == "genus":
                    species = self._species_typo(hit.taxon, words[hit.end])
                if species is not None:
                    hit = _Match(species, "epithet", i, hit.end + 1)
            if hit is None:
                after_name = (
                    bool(out)
                    and out[-1].end == i
                    and out[-1].taxon.rank in _EPITHET_AFTER
                    and words[i].islower()
                )
                typo = None if after_name else vocabulary_typo(words[i])
                if typo is not None:
                    fixes[words[i]] = typo
            if hit is not None:
                out.append(hit)
                i = hit.end
                # "neoceratium falcatum inflatum mix": a second epithet of the same genus
                while (
                    hit.taxon.rank == "species"
                    and hit.end - hit.start == 2
                    and i < len(words)
                    and words[i].islower()
                    and (second := bb.get(f"{words[hit.start]} {words[i]}")) is not None
                ):
                    out.append(_Match(bb.accepted(second), "exact", i, i + 1))
                    i += 1
            else:
                i += 1
        # abbreviations only when they refine what was found ("hydromedusae_narco_young")
        if out:
            matched = {j for m in out for j in range(m.start, m.end)}
            for j, w in enumerate(words):
                if j in matched or w in fixes:
                    continue
                t = bb.prefix(w) if len(w) <= _MAX_ABBREVIATION else None
                if t is not None and any(bb.is_ancestor(m.taxon, t) for m in out):
                    out.append(_Match(t, "prefix", j, j + 1))
        else:
            for j, w in enumerate(words):
                if w in fixes:
                    continue
                t = bb.prefix(w) if len(w) <= _MAX_ABBREVIATION else None
                if t is not None:
                    out.append(_Match(t, "prefix", j, j + 1))
        out.sort(key=lambda m: m.start)
        return out, fixes

    def _word(self, word: str, i: int) -> _Match | None:
        bb = self.backbone
        t = bb.find(word)
        if t is not None:
            return _Match(t, "exact", i, i + 1)
        if len(word) == 1:
            return None
        for base in _singulars(word):
            v = self._vernacular(base)
            if v is not None:
                return _Match(v, "vernacular", i, i + 1)
        for base in _singulars(word):
            for cand in _stems(base):
                t = bb.get(cand)
                if t is not None and RANK_DEPTH.get(t.rank, 99) < RANK_DEPTH["genus"]:
                    return _Match(bb.accepted(t), "stem", i, i + 1)
        if "-" in word:
            parts = [p for p in word.split("-") if p]
            for p in parts:
                m = self._word(p, i)
                if m is not None:
                    return m
        t = bb.fuzzy(word)
        if t is not None:
            return _Match(t, "fuzzy", i, i + 1)
        for base in _singulars(word)[:1]:
            v = self._vernacular_fuzzy(base)
            if v is not None:
                return _Match(v, "fuzzy", i, i + 1)
        return None

    def _vernacular(self, term: str) -> Taxon | None:
        name = self.backbone.vernacular_name(term)
        if not name:
            return None
        return self.backbone.find(name)

    def _vernacular_fuzzy(self, term: str) -> Taxon | None:
        import difflib

        key = norm(term)
        if len(key) < 6:
            return None
        pool = [k for k in self.backbone._vernacular if k[:1] == key[:1]]
        close = difflib.get_close_matches(key, pool, n=1, cutoff=0.85)
        return self._vernacular(close[0]) if close else None

    def _abbreviated_species(self, first: str, second: str, i: int) -> _Match | None:
        """`G delicatula` → Guinardia delicatula when one species fits."""
        if len(first) > 2 or not first[:1].isalpha() or len(second) < 4:
            return None
        fits = {
            t.name: t
            for t in self.backbone.by_epithet(second)
            if t.name.lower().startswith(first.lower())
        }
        if len(fits) == 1:
            return _Match(next(iter(fits.values())), "epithet", i, i + 2)
        return None

    def _epithet_under(self, taxon: Taxon, epithet: str) -> Taxon | None:
        """The one species with this epithet under `taxon` (a genus or family), or None."""
        if len(epithet) < 4 or not epithet.isalpha() or not epithet.islower():
            return None
        fits = {t.name: t for t in self.backbone.by_epithet(epithet)}
        fits = {n: t for n, t in fits.items() if self.backbone.is_ancestor(taxon, t)}
        return next(iter(fits.values())) if len(fits) == 1 else None

    def _species_typo(self, genus: Taxon, epithet: str) -> Taxon | None:
        """`Chaetoceros curvusetus` → Chaetoceros curvisetus (a typo in the epithet)."""
        if len(epithet) < 5 or not epithet.isalpha():
            return None
        t = self.backbone.fuzzy(f"{genus.name} {epithet}", cutoff=0.9)
        if t is not None and t.rank == "species" and t.parent == genus.name:
            return t
        return None

    def _from_override(self, raw: str, source: str, o) -> Resolution:
        bb = self.backbone
        note = o.note
        if o.name and o.name != LIVING_ROOT:
            taxon = bb.find(o.name)
            if taxon is None:
                reason = f"override names {o.name!r}, not in the backbone"
                return Resolution(source, raw, Lineage(), "manual", 0.0, "unresolved", reason)
            lin = bb.lineage(taxon)
            lin = lin.with_flags(
                qualifier=o.qualifier or "full_body",
                root_class=o.root_class or "living",
                plankton=lin.plankton if o.plankton is None else o.plankton,
            )
            return Resolution(source, raw, lin, "manual", 1.0, reason=note)
        if o.root_class:
            living = o.root_class == "living"
            category = parse_label(raw).category
            name = LIVING_ROOT if living else (o.name or category or o.root_class)
            lin = Lineage(
                name=name,
                root_class=o.root_class,
                plankton=o.plankton if o.plankton is not None else (None if living else False),
                qualifier=o.qualifier if living else "",
            )
            return Resolution(source, raw, lin, "manual", 1.0, reason=note)
        reason = note.removeprefix("unresolved:").strip() or "expert: unresolved"
        return Resolution(source, raw, Lineage(), "manual", 1.0, "unresolved", reason)

    def _from_worms(self, raw: str, source: str, parsed: ParsedLabel) -> Resolution | None:
        from planktonzilla.taxonomy.worms import WormsError

        words = [w for w in parsed.words if len(w) > 1]
        candidates = [" ".join(words[:2]), words[0]] if len(words) > 1 else words
        for name in candidates:
            try:
                lin = self.worms.lineage(name)
            except WormsError:
                return None
            if lin is not None:
                lin = lin.with_flags(qualifier=parsed.qualifier or "full_body")
                return Resolution(source, raw, lin, "worms", 0.8)
        return None


def _consistent(bb: Backbone, matches: list[_Match]) -> _Match | None:
    """The deepest match when all matches lie on one line of descent, else None. Vernacular,
    stage and abbreviation matches that disagree with scientific names are dropped first."""
    if not matches:
        return None
    scientific = [m for m in matches if m.how in ("exact", "epithet", "fuzzy")]
    pool = matches
    if scientific and len(scientific) < len(matches):
        chain_ok = _one_line(bb, matches)
        pool = matches if chain_ok else scientific
    if not _one_line(bb, pool):
        return None
    return max(pool, key=lambda m: (RANK_DEPTH[m.taxon.rank], -m.start))


def _one_line(bb: Backbone, matches: list[_Match]) -> bool:
    deepest = max(matches, key=lambda m: RANK_DEPTH[m.taxon.rank]).taxon
    return all(bb.is_ancestor(m.taxon, deepest) for m in matches)


def _singulars(word: str) -> list[str]:
    w = norm(word)
    out = [w]
    if w.endswith("ies"):
        out.append(w[:-3] + "y")
    if w.endswith("es"):
        out.append(w[:-2])
    if w.endswith("s") and not w.endswith("ss"):
        out.append(w[:-1])
    if w.endswith("ae"):
        out.append(w[:-1])
    if w.endswith("i"):
        out.append(w[:-1] + "us")
    return list(dict.fromkeys(out))


def _stems(base: str) -> list[str]:
    """Scientific names a vernacular-looking word may stand for: copepod → Copepoda,
    siphonophore → Siphonophorae, calycophoran → Calycophorae, echinoderm → Echinodermata."""
    out = [base + "a", base + "ae", base + "ida", base + "idae", base + "ea", base + "ata"]
    if base.endswith("e"):
        out += [base[:-1] + "a", base[:-1] + "ae"]
    if base.endswith("n"):
        out += [base[:-1], base[:-1] + "e"]
    return out


# -- public functions ---------------------------------------------------------------------------

_DEFAULT: Resolver | None = None


def default_resolver() -> Resolver:
    """A resolver over the packaged backbone (loaded once)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Resolver(Backbone.load())
    return _DEFAULT


def resolve_label(
    raw_label: str,
    source: str | None = None,
    *,
    backbone: Backbone | None = None,
    worms: WormsClient | None = None,
) -> Resolution:
    """Resolve one raw label offline (packaged backbone) or with the given backbone / WoRMS.

    >>> resolve_label("copepod_calanoid_eggs").lineage.qualifier  # doctest: +SKIP
    'egg'
    """
    if backbone is None and worms is None:
        return default_resolver().resolve(raw_label, source)
    resolver = Resolver(backbone or Backbone.load(), worms)
    return resolver.resolve(raw_label, source)


def resolutions_table(rows: Iterable[Resolution]) -> pa.Table:
    """A pyarrow table with `COLUMNS` from resolutions."""
    return rows_table([r.row() for r in rows])


def rows_table(rows: list[dict]) -> pa.Table:
    import pyarrow as pa

    schema = pa.schema(
        [
            (c, pa.int64() if c == "aphia_id" else pa.bool_() if c == "plankton" else pa.string())
            for c in COLUMNS
        ]
    ).set(COLUMNS.index("confidence"), pa.field("confidence", pa.float64()))
    cols = {c: [r.get(c) for r in rows] for c in COLUMNS}
    for c in COLUMNS:
        if schema.field(c).type == pa.string():
            cols[c] = [("" if v is None else str(v)) for v in cols[c]]
    return pa.table(cols, schema=schema)


def validate_row(row: dict) -> list[str]:
    """What is wrong with one mapping row ([] when fine)."""
    errors = []
    lin = Lineage.from_dict(row)
    if row.get("status") not in ("resolved", "unresolved"):
        errors.append(f"status {row.get('status')!r}")
    if row.get("status") == "unresolved":
        if not row.get("reason"):
            errors.append("unresolved without a reason")
        return errors
    if lin.root_class not in ROOT_CLASSES:
        errors.append(f"root_class {lin.root_class!r}")
    if lin.qualifier and lin.qualifier not in QUALIFIERS:
        errors.append(f"qualifier {lin.qualifier!r} not in the vocabulary")
    if lin.root_class != "living" and (any(lin.ranks()) or lin.qualifier):
        errors.append("non-living row with a lineage or qualifier")
    if not lin.is_contiguous():
        errors.append("ranks not contiguous")
    if row.get("provenance") not in PROVENANCES:
        errors.append(f"provenance {row.get('provenance')!r}")
    if lin.rank in RANKS and lin.get(lin.rank) != lin.name:
        errors.append(f"{lin.rank} is {lin.get(lin.rank)!r}, name is {lin.name!r}")
    if lin.species and not lin.species.startswith(lin.genus + " "):
        errors.append(f"species {lin.species!r} not in genus {lin.genus!r}")
    return errors
