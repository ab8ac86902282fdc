"""Resolve a raw label to a `Lineage`: expert override, else parser + backbone rules, else
(optionally) WoRMS; or an explicit `unresolved` with a reason.

Provenance: `manual` (override), `backbone` (a scientific name found in the backbone),
`index` (a name found only in the broad NCBI name index, grafted under the backbone),
`rule` (vernacular words, life stages, typo or abbreviation matching, non-living vocabulary,
common ancestor of alternatives, ranks kept from a path or a binomial by nomenclature),
`worms` (the online client).

A label that is a lineage path (`Biota>Animalia>…`, `Class,Order,Family,Genus,Species`) is
evidence at every level: the deepest segment that resolves is the anchor, the others must
agree with it (a conflict lowers the confidence and is reported), and deeper segments no index
knows are kept with a rank from nomenclature (`-idae`, `-aceae`, a binomial…) or position.
A name with several meanings (a homonym in the index) is decided by the label's other names,
then by the source's other labels (`resolve_many`), else it is returned `ambiguous` with its
candidates.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from planktonzilla.taxonomy.backbone import Backbone, Taxon, norm
from planktonzilla.taxonomy.index import Graft, NameIndex, graft
from planktonzilla.taxonomy.lineage import (
    QUALIFIERS,
    RANK_DEPTH,
    RANKS,
    ROOT_CLASSES,
    Lineage,
    living_lineage,
)
from planktonzilla.taxonomy.parse import (
    STAGES,
    TEMPORARY_REASON,
    WEAK_REASON,
    ParsedLabel,
    looks_like_epithet,
    parse_label,
    reparse,
    split_path,
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
PROVENANCES = ("manual", "backbone", "index", "rule", "worms")
STATUSES = ("resolved", "unresolved", "ambiguous")
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
    "index": 0.8,  #: below every curated exact match
    "nomenclature": 0.6,  #: a rank kept from the label's own words, in no index
}
#: how a match was found, when it is a scientific name (not a vernacular word or a stage)
_SCIENTIFIC = frozenset({"exact", "epithet", "fuzzy", "index", "nomenclature"})
#: index names taken at their own rank: order and below (higher NCBI ranks follow another
#: convention than WoRMS: NCBI's class Hexanauplia holds our class Copepoda)
_INDEX_TOP = RANK_DEPTH["order"]
#: name endings → rank (zoological and botanical codes), longest first
_SUFFIX_RANKS: tuple[tuple[str, str], ...] = (
    ("phycidae", "subclass"),
    ("phyceae", "class"),
    ("mycetes", "class"),
    ("oideae", "subfamily"),
    ("aceae", "family"),
    ("oidea", "superfamily"),
    ("ineae", "suborder"),
    ("idae", "family"),
    ("inae", "subfamily"),
    ("ales", "order"),
    ("ida", "order"),
    ("ini", "tribe"),
)


@dataclass(frozen=True, slots=True)
class Resolution:
    """The answer for one raw label."""

    source: str
    raw_label: str
    lineage: Lineage
    provenance: str
    confidence: float
    status: str = "resolved"  #: resolved | unresolved | ambiguous
    reason: str = ""  #: why unresolved (or a note)
    #: how each rank was decided (segment, rule, index entry, override), for `--explain`
    explain: tuple[str, ...] = ()
    #: the lineages an ambiguous name may have (homonyms), best first
    candidates: tuple[Lineage, ...] = ()

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
    #: homonyms from the index not yet decided (taxon is the first of them)
    candidates: tuple[Taxon, ...] = ()


@dataclass
class Resolver:
    """Resolves labels against one backbone (and optionally WoRMS), caching by label."""

    backbone: Backbone
    worms: WormsClient | None = None
    #: the broad name index (default: `PZ_NAME_INDEX` or the packaged one); None = curated only
    index: NameIndex | None = field(default_factory=NameIndex.default)
    _cache: dict = field(default_factory=dict)
    #: stand-in taxon → its graft (index names and names kept by nomenclature); a pure
    #: function of the index and the backbone, so answers never depend on earlier labels
    _grafts: dict = field(default_factory=dict)
    _entry_grafts: dict = field(default_factory=dict)

    def resolve(self, raw_label: str, source: str | None = None) -> Resolution:
        key = (source or "", raw_label)
        hit = self._cache.get(key)
        if hit is None:
            hit = self._resolve(raw_label, source or "")
            self._cache[key] = hit
        return hit

    def resolve_many(self, labels: Iterable[str], source: str | None = None) -> list[Resolution]:
        """Resolve a source's labels together: a homonym that its own label leaves
        `ambiguous` is decided by the source's other labels (the candidate sharing the most
        ranks with them, when one does)."""
        out = [self.resolve(label, source) for label in labels]
        context = [r.lineage.ranks() for r in out if r.resolved and r.lineage.rank]
        decided = []
        for r in out:
            if r.status == "ambiguous" and context:
                scores = [max(_shared(c.ranks(), o) for o in context) for c in r.candidates]
                best = max(scores)
                if best >= 2 and scores.count(best) == 1:
                    lin = r.candidates[scores.index(best)]
                    why = f"homonym decided by the source's other labels ({lin.get('class')})"
                    r = dataclasses.replace(
                        r,
                        lineage=lin,
                        status="resolved",
                        confidence=_CONFIDENCE["index"] - 0.1,
                        reason=why,
                        explain=(*r.explain, why),
                    )
            decided.append(r)
        return decided

    # -- the rules ----------------------------------------------------------------------------

    def _resolve(self, raw: str, source: str) -> Resolution:
        override = self.backbone.override(source, raw)
        if override is not None:
            return self._from_override(raw, source, override)
        segments = split_path(raw)
        if len(segments) > 1 and (path := self._resolve_path(raw, source, segments)):
            return path
        parsed, main, parent = self._parse_and_match(raw)
        homonyms = self._decide(main + parent, parsed.words + parsed.parent_words)
        taxon, how, note, mixed = self._choose(parsed, main, parent)
        if taxon is None and parsed.stages:
            taxon, how = self._stage_taxon(parsed.stages), "stage"
        online = self.worms is not None and parsed.words
        if online and (taxon is None or self._grafts.get(taxon) is not None):
            # WoRMS, when asked, is our convention: it outranks the broad (NCBI) index
            found = self._from_worms(raw, source, parsed)
            if found is not None:
                return found
        if taxon is not None:
            undecided = _undecided(taxon, main + parent)
            if undecided:
                return self._ambiguous(raw, source, parsed, undecided)
            qualifier = parsed.qualifier or ("mix" if mixed else "full_body")
            decided = [f"decided by label words {' '.join(parsed.words + parsed.parent_words)!r}"]
            return self._taxon_result(
                raw, source, taxon, how, note, qualifier, parsed, decided + homonyms
            )
        return self._no_taxon(raw, source, parsed)

    def _parse_and_match(self, text: str) -> tuple[ParsedLabel, list[_Match], list[_Match]]:
        parsed = self._split_names(parse_label(text))
        main, fixes = self._match(parsed.words)
        parent, parent_fixes = self._match(parsed.parent_words)
        fixes.update(parent_fixes)
        if fixes:  # typos of vocabulary words ("lavae"): parse again with them fixed
            parsed = self._split_names(reparse(parsed, fixes))
            main, _ = self._match(parsed.words)
            parent, _ = self._match(parsed.parent_words)
        return parsed, main, parent

    def _taxon_result(
        self,
        raw: str,
        source: str,
        taxon: Taxon,
        how: str,
        note: str,
        qualifier: str,
        parsed: ParsedLabel,
        decided: list[str],
    ) -> Resolution:
        lin = self._lineage(taxon).with_flags(qualifier=qualifier)
        g = self._grafts.get(taxon)
        if g is not None:
            how = "index" if g.entry is not None else "nomenclature"
            provenance = "index" if g.entry is not None else "rule"
        else:
            provenance = "backbone" if how == "exact" else "rule"
        confidence = _CONFIDENCE.get(how, 0.8)
        if note:
            confidence = min(confidence, 0.8)
        if parsed.placeholder:
            stop = f"placeholder {parsed.placeholder!r}: identified to {lin.rank or 'no rank'} only"
            note = f"{note}; {stop}" if note else stop
        explain = (*decided, f"rule: {how}", *self._rank_origins(lin, taxon, {}))
        if note:
            explain += (f"note: {note}",)
        return Resolution(source, raw, lin, provenance, confidence, reason=note, explain=explain)

    def _no_taxon(self, raw: str, source: str, parsed: ParsedLabel) -> Resolution:
        if parsed.category:
            lin = Lineage(name=parsed.category, root_class=parsed.category_root, plankton=False)
            why = (f"non-living vocabulary {', '.join(parsed.category_words)!r} (rule)",)
            return Resolution(source, raw, lin, "rule", 0.9, explain=why)
        unmatched = [w for w in parsed.words if len(w) > 1]
        weak = parsed.unresolved in ("", WEAK_REASON, TEMPORARY_REASON)
        if parsed.living or (parsed.qualifier and not unmatched and weak):
            lin = Lineage(
                name=LIVING_ROOT, root_class="living", plankton=True, qualifier=parsed.qualifier
            )
            why = ("a living thing, no taxon named (rule)",)
            return Resolution(source, raw, lin, "rule", 0.6, explain=why)
        if parsed.unresolved and (not unmatched or not weak):
            reason = parsed.unresolved  # "square unknown": the label says it is unidentified
        elif unmatched:
            reason = f"no taxon or category recognised in {' '.join(unmatched)!r}"
        elif parsed.placeholder:
            reason = "unidentified object"
        else:
            reason = parsed.unresolved or "no taxon or category recognised"
        return Resolution(
            source, raw, Lineage(), "rule", 0.0, "unresolved", reason, explain=(reason,)
        )

    def _ambiguous(
        self, raw: str, source: str, parsed: ParsedLabel, taxa: tuple[Taxon, ...]
    ) -> Resolution:
        candidates = tuple(self._lineage(t).with_flags(qualifier="") for t in taxa)
        shared = min(_shared(c.ranks(), candidates[0].ranks()) for c in candidates)
        values = dict(zip(RANKS[:shared], candidates[0].ranks()[:shared], strict=True))
        if shared:
            top = RANKS[shared - 1]
            lin = living_lineage(
                values, name=values[top], rank=top, plankton=candidates[0].plankton
            )
        else:
            lin = Lineage(name=LIVING_ROOT, root_class="living", plankton=True)
        lin = lin.with_flags(qualifier=parsed.qualifier or "full_body")
        listed = "; ".join(" > ".join(v for v in c.ranks() if v) for c in candidates)
        reason = f"{taxa[0].name} has {len(taxa)} meanings: {listed}"
        explain = (reason, "nothing in the label decides between them: name a higher rank")
        return Resolution(
            source,
            raw,
            lin,
            "index",
            0.3,
            "ambiguous",
            reason,
            explain=explain,
            candidates=candidates,
        )

    # -- lineage paths --------------------------------------------------------------------------

    def _resolve_path(self, raw: str, source: str, segments: list[str]) -> Resolution | None:
        """Anchor on the deepest segment that resolves; check the others; keep deeper
        segments no index knows, ranked by nomenclature or by position. None when the
        segments are alternatives rather than a lineage (`Oithona/Oncaea`, `Acartia, Temora`:
        every one a taxon of the same rank, none above another)."""
        segs = [self._parse_and_match(s) for s in segments]
        homonyms = self._decide([m for _, main, parent in segs for m in main + parent], segments)
        picks: list[tuple[Taxon | None, str]] = []
        for parsed, main, parent in segs:
            taxon, how, _, _ = self._choose(parsed, main, parent)
            undecided = _undecided(taxon, main + parent) if taxon is not None else ()
            picks.append((taxon, how) if not undecided else (None, ""))
        qualifier = next((p.qualifier for p, _, _ in reversed(segs) if p.qualifier), "")
        found = [k for k, (t, _) in enumerate(picks) if t is not None]
        taxa = [picks[k][0] for k in found]
        if (
            len(found) == len(segments)
            and ">" not in raw
            and len({t.rank for t in taxa}) == 1
            and len({t.name for t in taxa}) == len(taxa)
        ):
            return None
        if not found:
            undecided = [
                _undecided(m.taxon, main) for _, main, _ in segs for m in main if m.candidates
            ]
            if undecided:
                parsed = dataclasses.replace(segs[-1][0], qualifier=qualifier)
                return self._ambiguous(raw, source, parsed, undecided[-1])
            last = next((p for p, _, _ in reversed(segs) if p.category or p.living), segs[-1][0])
            return self._no_taxon(raw, source, dataclasses.replace(last, qualifier=qualifier))
        k = found[-1]
        anchor, how = picks[k]
        for j in found[:-1]:  # an upper segment may name something deeper ("Calanus,Copepoda")
            t = picks[j][0]
            if t is not None and self._is_ancestor(anchor, t) and t != anchor:
                k, (anchor, how) = j, picks[j]
        explain = [f"path of {len(segments)} segments; anchor: segment {k + 1} {segments[k]!r}"]
        explain += homonyms
        notes = []
        for j in found:
            t = picks[j][0]
            if j != k and not (self._is_ancestor(t, anchor) or self._is_ancestor(anchor, t)):
                notes.append(f"conflict: segment {segments[j]!r} ({t.name}) is not on the line")
        for j, (parsed, _, _) in enumerate(segs):
            if picks[j][0] is None and parsed.category and not parsed.qualifier:
                notes.append(f"conflict: segment {segments[j]!r} says {parsed.category_root}")
        for j, (t, _) in enumerate(picks):
            if t is None and j < k and segs[j][0].words:
                explain.append(f"segment {segments[j]!r}: no curated rank (context only)")
        base = self._lineage(anchor)
        values = dict(zip(RANKS, base.ranks(), strict=True))
        name, rank = base.name, base.rank
        kept: dict[str, str] = {}
        placeholder = segs[k][0].placeholder
        for j in range(k + 1, len(segments)):
            parsed = segs[j][0]
            placeholder = placeholder or parsed.placeholder
            if placeholder:
                break  # "Ge._unk", "sp.": not identified below
            if not parsed.words or picks[j][0] is not None:
                # a stage or qualifier (`…>egg`), or a name above the anchor, repeated
                # (EcoTaxa's `…>Hydrozoa>Cnidaria`)
                continue
            got = _rank_of(parsed.words, values, rank)
            if got is None:
                explain.append(f"segment {segments[j]!r}: no scientific name below {name}")
                break
            name, rank, why = got
            if rank in RANKS:
                if rank == "species":
                    values["genus"] = values["genus"] or name.split(" ", 1)[0]
                values[rank] = name
                kept[rank] = f"segment {j + 1} {segments[j]!r} ({why})"
            explain.append(f"kept segment {segments[j]!r} as {rank} ({why})")
        if placeholder:
            notes.append(f"placeholder {placeholder!r}: identified to {rank or 'no rank'} only")
        provenance = {"exact": "backbone"}.get(how, "rule")
        g = self._grafts.get(anchor)
        confidence = _CONFIDENCE.get(how, 0.8)
        if g is not None:
            provenance = "index" if g.entry is not None else "rule"
            confidence = _CONFIDENCE["index" if g.entry is not None else "nomenclature"]
        lin = base
        if kept or name != base.name:
            lin = living_lineage(values, name=name, rank=rank, plankton=base.plankton)
            provenance, confidence = "rule", _CONFIDENCE["nomenclature"]
        if any(n.startswith("conflict") for n in notes):
            confidence = min(confidence, 0.5)
        lin = lin.with_flags(qualifier=qualifier or "full_body")
        explain += self._rank_origins(lin, anchor, kept)
        note = "; ".join(notes)
        explain += [f"note: {n}" for n in notes]
        return Resolution(
            source, raw, lin, provenance, confidence, reason=note, explain=tuple(explain)
        )

    # -- the broad index, grafts and homonyms ---------------------------------------------------

    def _index_match(self, phrase: str, start: int, end: int) -> _Match | None:
        """Index entries named `phrase`, grafted (several when a homonym), or None."""
        if self.index is None or len(phrase) < 4 or not phrase[:1].isalpha():
            return None
        grafts: list[Graft] = []
        for e in self.index.lookup(phrase):
            if RANK_DEPTH.get(e.rank, 0) < _INDEX_TOP:
                continue
            g = self._entry_grafts.get(e.taxid, False)
            if g is False:
                g = graft(self.backbone, self.index, e)
                self._entry_grafts[e.taxid] = g
                if g is not None:
                    self._grafts.setdefault(g.taxon, g)
            if g is not None and all(g.lineage.ranks() != o.lineage.ranks() for o in grafts):
                grafts.append(g)
        if not grafts:
            return None
        taxa = tuple(g.taxon for g in grafts)
        return _Match(taxa[0], "index", start, end, taxa if len(taxa) > 1 else ())

    def _nomenclature_species(self, genus: Taxon, epithet: str, start: int) -> _Match | None:
        """`Genus epithet` with the genus known and the species in no index: the species is
        kept by nomenclature (a lower-case Latin word after a genus)."""
        bb = self.backbone
        if (
            not epithet.islower()
            or not looks_like_epithet(epithet)
            or bb.vernacular_name(epithet) is not None
            or bb.get(epithet) is not None
            or vocabulary_typo(epithet) is not None
        ):
            return None
        base = self._lineage(genus)
        name = f"{base.genus} {epithet}"
        values = dict(zip(RANKS, base.ranks(), strict=True))
        values["species"] = name
        lin = living_lineage(values, name=name, rank="species", plankton=base.plankton)
        parent = self._grafts.get(genus)
        anchor = parent.anchor if parent is not None else bb.accepted(genus)
        taxon = Taxon(name, "species", genus.name)
        below = parent.below + (parent.entry,) if parent and parent.entry else ()
        self._grafts.setdefault(taxon, Graft(None, anchor, lin, below, taxon))
        return _Match(taxon, "nomenclature", start, start + 2)

    def _decide(self, matches: list[_Match], words: Iterable[str]) -> list[str]:
        """Homonyms decided by the other names of the same label: the candidate sharing the
        most ranks with the other matches, plus the label's words found in its NCBI lineage
        (`Ascidiacea/Herdmania`); then the plankton prior (a candidate of a plankton group).
        Returns what decided each, for `explain`."""
        said = {norm(w) for w in words}
        decided = []
        for m in matches:
            if not m.candidates:
                continue
            others = [self._lineage(o.taxon).ranks() for o in matches if not o.candidates]
            pool = list(m.candidates)
            scores = []
            for c in pool:
                g = self._grafts[c]
                lineage = {v.lower() for v in self._names_up(c)} | g.ncbi_names
                hits = len((said - {norm(c.name)}) & lineage)
                shared = max((_shared(self._lineage(c).ranks(), o) for o in others), default=0)
                scores.append(shared + hits)
            best = max(scores)
            why = "the label's other names"
            if best:
                pool = [c for c, s in zip(pool, scores, strict=True) if s == best]
            if len(pool) > 1:
                planktonic = [c for c in pool if self._lineage(c).plankton]
                pool, why = (
                    (planktonic, "the plankton prior") if len(planktonic) == 1 else (pool, "")
                )
            if len(pool) == 1:
                n = len(m.candidates)
                decided.append(f"homonym {pool[0].name!r} ({n} meanings in the index): by {why}")
                m.taxon, m.candidates = pool[0], ()
        return decided

    def _lineage(self, taxon: Taxon) -> Lineage:
        g = self._grafts.get(taxon)
        return g.lineage if g is not None else self.backbone.lineage(taxon)

    def _names_up(self, taxon: Taxon) -> list[str]:
        """Names on the line of descent of `taxon`, bottom-up (graft-aware)."""
        g = self._grafts.get(taxon)
        if g is None:
            return [t.name for t in self.backbone.ancestors(taxon)]
        inside = [g.lineage.name] + [v for v in reversed(g.lineage.ranks()) if v]
        return inside + [t.name for t in self.backbone.ancestors(g.anchor)]

    def _is_ancestor(self, ancestor: Taxon, taxon: Taxon) -> bool:
        name = ancestor.name if ancestor in self._grafts else self.backbone.accepted(ancestor).name
        return name in self._names_up(taxon)

    def _common_ancestor(self, taxa: Iterable[Taxon]) -> Taxon | None:
        chains = [self._names_up(t) for t in taxa]
        if not chains:
            return None
        shared = set.intersection(*(set(c) for c in chains))
        for name in chains[0]:
            listed = self.backbone.get(name) if name in shared else None
            if listed is not None:
                return self.backbone.accepted(listed)
        return None

    def _rank_origins(self, lin: Lineage, taxon: Taxon, kept: dict[str, str]) -> list[str]:
        """One line per filled rank: what decided it."""
        g = self._grafts.get(taxon)
        anchor = g.anchor if g is not None else taxon
        curated = self.backbone.lineage(anchor).ranks()
        entries = {e.name: e for e in (g.below + ((g.entry,) if g.entry else ()))} if g else {}
        lines = []
        for i, (rank, value) in enumerate(zip(RANKS, lin.ranks(), strict=True)):
            if not value:
                continue
            if rank in kept:
                origin = kept[rank]
            elif value == curated[i]:
                origin = "backbone (curated)"
                if value.endswith("incertae sedis"):
                    origin += ", rank missing there"
            elif value in entries:
                e = entries[value]
                origin = f"index: NCBI taxid {e.taxid} ({e.rank}) under {anchor.name}"
            elif value.endswith("incertae sedis"):
                origin = "rank missing in the index"
            elif g is not None and g.entry is None and rank == "species":
                origin = "nomenclature: genus + epithet, in no index"
            else:
                origin = "rule"
            lines.append(f"  {rank:<8} {value:<32} {origin}")
        return lines

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
        note = ""
        mixed = parsed.connector == "host"
        # prefer scientific names over vernacular words when they disagree
        picked = _consistent(self._is_ancestor, main)
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
                ancestor = self._common_ancestor(m.taxon for m in alternatives)
                if ancestor is not None:
                    taxon, how = ancestor, "exact"
                    note = "common ancestor of " + ", ".join(m.taxon.name for m in alternatives)
                    mixed = True
            if taxon is None:  # host first: "Rhizosolenia inter. Richelia", "X with Y"
                taxon, how = alternatives[0].taxon, alternatives[0].how
        top_parent = _consistent(self._is_ancestor, parent)
        if top_parent is not None:
            if taxon is None:
                taxon, how = top_parent.taxon, top_parent.how
            elif not self._is_ancestor(top_parent.taxon, taxon):
                # `X<Y` with X not under Y: X is a morphological category named like a taxon
                note = f"{taxon.name} is not under {top_parent.taxon.name}"
                taxon, how = top_parent.taxon, top_parent.how
        if taxon is not None and parsed.stages:
            implied = self._stage_taxon(parsed.stages)
            if implied is not None and self._is_ancestor(taxon, implied):
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
                hit = self._index_match(f"{words[i]} {words[i + 1]}", i, i + 2)
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
                elif hit.taxon.rank == "genus" and not hit.candidates:
                    genus = self._lineage(hit.taxon).genus
                    hit = (
                        self._index_match(f"{genus} {words[hit.end]}", i, hit.end + 1)
                        or self._nomenclature_species(hit.taxon, words[hit.end], i)
                        or hit
                    )
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
                if t is not None and any(self._is_ancestor(m.taxon, t) for m in out):
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
        found = self._index_match(word, i, i + 1)
        if found is not None:
            return found
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
            why = (f"expert override (overrides.csv) {o.source or '*'}/{raw} → {o.name}",)
            return Resolution(source, raw, lin, "manual", 1.0, reason=note, explain=why)
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
            why = (f"expert override (overrides.csv) {o.source or '*'}/{raw} → {name}",)
            return Resolution(source, raw, lin, "manual", 1.0, reason=note, explain=why)
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


def _consistent(is_ancestor, matches: list[_Match]) -> _Match | None:
    """The deepest match when all matches lie on one line of descent, else None. Vernacular,
    stage and abbreviation matches that disagree with scientific names are dropped first."""
    if not matches:
        return None
    scientific = [m for m in matches if m.how in _SCIENTIFIC]
    pool = matches
    if scientific and len(scientific) < len(matches):
        chain_ok = _one_line(is_ancestor, matches)
        pool = matches if chain_ok else scientific
    if not _one_line(is_ancestor, pool):
        return None
    return max(pool, key=lambda m: (RANK_DEPTH[m.taxon.rank], -m.start))


def _one_line(is_ancestor, matches: list[_Match]) -> bool:
    deepest = max(matches, key=lambda m: RANK_DEPTH[m.taxon.rank]).taxon
    return all(is_ancestor(m.taxon, deepest) for m in matches)


def _undecided(taxon: Taxon, matches: list[_Match]) -> tuple[Taxon, ...]:
    """The homonyms still open for the chosen taxon (() when it is decided)."""
    return next((m.candidates for m in matches if m.taxon == taxon and m.candidates), ())


def _shared(a: tuple[str, ...], b: tuple[str, ...]) -> int:
    """How many top ranks two lineages share."""
    n = 0
    for x, y in zip(a, b, strict=True):
        if not x or x != y:
            break
        n += 1
    return n


def _rank_of(
    words: tuple[str, ...], values: dict[str, str], above: str
) -> tuple[str, str, str] | None:
    """(name, rank, why) of a path segment no index knows, below rank `above`: a binomial
    is a species; a name ending is a rank by the zoological and botanical codes (`-idae`
    family, `-aceae` family, `-ales` order, `-phyceae` class…); else the next rank down
    (position); a lone lower-case word after a genus is its epithet. None when the segment
    cannot sit below `above`."""
    depth = RANK_DEPTH.get(above, -1)
    if len(words) == 2 and words[1].islower() and looks_like_epithet(words[1]):
        genus = words[0][:1].upper() + words[0][1:].lower()
        if values.get("genus") and values["genus"] != genus:
            return None  # the binomial's genus is not the path's genus
        return f"{genus} {words[1]}", "species", "binomial: genus + epithet"
    if len(words) != 1 or not words[0][:1].isalpha():
        return None
    word = words[0]
    if (
        looks_like_epithet(word)
        and word.islower()
        and values.get("genus")
        and depth == RANK_DEPTH["genus"]
    ):
        return f"{values['genus']} {word}", "species", "epithet after the genus"
    name = word[:1].upper() + word[1:]
    low = name.lower()
    rank = next((r for suffix, r in _SUFFIX_RANKS if low.endswith(suffix)), "")
    why = f"name ending -{next(s for s, r in _SUFFIX_RANKS if low.endswith(s))}" if rank else ""
    if not rank and not word[:1].isupper():
        return None  # a lower-case word is a morphological category (`solitaryblack`)
    if not rank:
        below = [r for r in RANKS if RANK_DEPTH[r] > depth and r != "species"]
        if not below:
            return None
        rank, why = below[0], "position: the next rank down"
    if RANK_DEPTH[rank] <= depth:
        return None
    return name, rank, why


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
    if row.get("status") not in STATUSES:
        errors.append(f"status {row.get('status')!r}")
    if row.get("status") in ("unresolved", "ambiguous") and not row.get("reason"):
        errors.append(f"{row.get('status')} without a reason")
    if row.get("status") == "unresolved":
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
