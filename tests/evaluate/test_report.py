"""Evaluation reports: merging runs, compatibility checks, Markdown/HTML/PNG output, `pz report`.

Runs are built from real metric computations (`classification_report` on random scores for a
6-class problem in two phyla), serialised to results.json and read back as a user would."""

import hashlib
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.evaluate import plots, protocols
from planktonzilla.evaluate.metrics import classification_report
from planktonzilla.evaluate.report import (
    IncompatibleResults,
    check_compatible,
    held_out_cells,
    load_results,
    merge_results,
    run_labels,
    write_report,
)

# Interleaved phyla so that grouping by phylum has to reorder them.
CLASSES = ["Chaetoceros", "Acartia", "Ditylum", "Calanus", "Thalassiosira", "Oithona"]
_COPEPOD = {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda"}
_DIATOM = {"kingdom": "Chromista", "phylum": "Bacillariophyta", "class": "Bacillariophyceae"}
LINEAGES = [
    {**_DIATOM, "order": "Chaetocerotales", "family": "Chaetocerotaceae", "genus": "Chaetoceros"},
    {**_COPEPOD, "order": "Calanoida", "family": "Acartiidae", "genus": "Acartia"},
    {**_DIATOM, "order": "Lithodesmiales", "family": "Lithodesmiaceae", "genus": "Ditylum"},
    {**_COPEPOD, "order": "Calanoida", "family": "Calanidae", "genus": "Calanus"},
    {**_DIATOM, "order": "Thalassiosirales", "family": "Thalassiosiraceae"},  # no genus
    {**_COPEPOD, "order": "Cyclopoida", "family": "Oithonidae", "genus": "Oithona"},
]
for _name, _lineage in zip(CLASSES, LINEAGES, strict=True):
    _lineage.update(species=None, name=_name, rank="genus" if _lineage.get("genus") else "family")
TRAIN_COUNTS = [120, 40, 9, 300, 3, 60]
SOURCES = ["ifcb", "isiis", "zooscan"]


def metrics(seed: int, skill: float, n: int = 90, train_counts=TRAIN_COUNTS) -> dict:
    """A real METRICS block: random logits nudged towards the true class by `skill`."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(CLASSES), n)
    scores = rng.normal(size=(n, len(CLASSES)))
    scores[np.arange(n), y] += skill
    block = classification_report(
        y, scores, CLASSES, class_lineages=LINEAGES, train_counts=train_counts
    )
    return json.loads(json.dumps(block))  # as read back from results.json (string keys)


def few_shot(seed: int) -> dict:
    """A few-shot block in the protocol's shape, each seed scored by `classification_report`
    (the real protocol would fit scikit-learn models: seconds of import for no extra cover)."""
    methods = {}
    for m, method in enumerate(("simpleshot", "logistic")):
        by_k = {}
        for k in (1, 5):
            runs = []
            for s in (0, 1, 2):
                block = metrics(1000 * seed + 100 * m + 10 * k + s, skill=0.5 * k**0.5, n=30)
                runs.append({"seed": s, "top1": block["top1"], "macro_f1": block["macro_f1"]})
            by_k[str(k)] = {"runs": runs}
            for key in ("top1", "macro_f1"):
                values = [r[key] for r in runs]
                by_k[str(k)] |= {f"{key}_mean": np.mean(values), f"{key}_std": np.std(values)}
        methods[method] = by_k
    return json.loads(json.dumps({"k": [1, 5], "seeds": [0, 1, 2], "methods": methods}))


def cross_source(seed: int) -> dict:
    """The real cross-source block: one fold per held-out source; each fold is scored on every
    source (the held-out one out of distribution, the others as in-distribution references)."""
    folds = []
    for i, held_out in enumerate(SOURCES):
        cells = {}
        for j, source in enumerate(SOURCES):
            block = metrics(seed * 50 + 3 * i + j, skill=1.0 if source == held_out else 3.0, n=40)
            cells[source] = (block["top1"], block["macro_f1"], block["n"])
        train_units = [s for s in SOURCES if s != held_out]
        folds.append(
            {"held_out": held_out, "train_units": train_units, "n_train": 200, "classes": 6,
             "cells": cells}
        )  # fmt: skip
    return protocols.cross_source(folds, SOURCES, rank="phylum", unit="source")


def make_run(name: str, protocols: dict, *, manifest="a1b2c3d4e5f60718293a", split_seed=0):
    return {
        "format": "planktonzilla-evaluation",
        "format_version": 1,
        "created": "2026-11-28T18:00:00+00:00",
        "code_version": "0.1.0",
        "model": {
            "name": name,
            "spec": f"models/{name}",
            "kind": "clip" if "clip" in name else "supervised",
            "hash": hashlib.sha256(name.encode()).hexdigest(),
        },
        "store": {"path": "/data/store", "manifest_hash": manifest},
        "taxonomy_version": "1.0.0",
        "split": {"scheme": "stratified", "info": {"seed": split_seed, "val": 0.1, "test": 0.1}},
        "rank": "deepest",
        "filters": {},
        "seeds": [0, 1, 2],
        "settings": {"batch_size": 64},
        "classes": CLASSES,
        "class_lineages": LINEAGES,
        "protocols": protocols,
    }


def resnet_run(**kwargs) -> dict:
    return make_run(
        "resnet", {"supervised": metrics(1, skill=2.5), "few-shot": few_shot(1)}, **kwargs
    )


def clip_run(**kwargs) -> dict:
    zero_shot = metrics(2, skill=1.0, train_counts=None)
    zero_shot.update(candidates="all 6 classes of the label space", caption_style="lineage")
    protocols = {
        "zero-shot": zero_shot,
        "linear-probe": metrics(3, skill=2.0),
        "few-shot": few_shot(2),
        "cross-source": cross_source(2),
    }
    return make_run("bioclip", protocols, **kwargs)


def save(run_or_comparison, path):
    path.write_text(json.dumps(run_or_comparison))
    return path


def md_table(markdown: str, section: str, nth: int = 0) -> list[dict[str, str]]:
    """Rows (header -> cell) of the nth table under the `## section` heading."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    tables, current = [], []
    for line in body.splitlines() + [""]:
        if line.startswith("|"):
            current.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
        elif current:
            tables.append(current)
            current = []
    header, _, *rows = tables[nth]
    return [dict(zip(header, row, strict=True)) for row in rows]


def pct(value) -> str:
    return f"{100 * value:.1f}"


@pytest.fixture(scope="module")
def runs():
    return [resnet_run(), clip_run()]


@pytest.fixture(scope="module")
def report(tmp_path_factory, runs):
    out = tmp_path_factory.mktemp("report")
    files = [save(run, out / f"{run['model']['name']}.json") for run in runs]
    paths = write_report(load_results(files), out / "cmp", title="ResNet vs BioCLIP")
    return paths


def test_report_files_and_valid_plots(report):
    for key in ("markdown", "html", "results"):
        assert report[key].is_file() and report[key].stat().st_size > 0
    names = sorted(key.removeprefix("plots/") for key in report if key.startswith("plots/"))
    # one confusion matrix per (model, protocol) with a metrics block, and each summary plot
    assert names == sorted(
        [
            "confusion-resnet-supervised.png",
            "confusion-bioclip-zero-shot.png",
            "confusion-bioclip-linear-probe.png",
            "cross-source-bioclip.png",
            "f1-vs-frequency.png",
            "few-shot.png",
            "per-rank-f1.png",
            "reliability.png",
        ]
    )
    for name in names:
        path = report[f"plots/{name}"]
        assert path.parent.name == "plots"
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            assert image.format == "PNG"
            assert 300 <= image.width <= 3000 and 250 <= image.height <= 3000, image.size


def test_html_is_self_contained(report):
    page = report["html"].read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert "<script" not in page and "<link" not in page
    plots_written = [key for key in report if key.startswith("plots/")]
    assert page.count('src="data:image/png;base64,') == len(plots_written)
    assert "<style>" in page
    assert "ResNet vs BioCLIP" in page
    for name in ("resnet", "bioclip"):
        assert f"<td>{name}</td>" in page


def test_main_table_numbers(report, runs):
    markdown = report["markdown"].read_text()
    rows = {row["model"]: row for row in md_table(markdown, "Comparison")}
    assert set(rows) == {"resnet", "bioclip"}
    supervised = runs[0]["protocols"]["supervised"]
    resnet = rows["resnet"]
    assert resnet["supervised · top-1"] == pct(supervised["top1"])
    assert resnet["supervised · top-5"] == pct(supervised["top5"])
    assert resnet["supervised · macro F1"] == pct(supervised["macro_f1"])
    assert resnet["supervised · weighted F1"] == pct(supervised["weighted_f1"])
    assert resnet["supervised · ECE"] == pct(supervised["ece"])
    assert resnet["zero-shot · top-1"] == "—"  # protocol not run for this model
    assert resnet["cross-source · held-out top-1 (mean)"] == "—"
    entry = runs[0]["protocols"]["few-shot"]["methods"]["logistic"]["5"]
    assert resnet["few-shot top-1 (mean ± std) · logistic k=5"] == (
        f"{pct(entry['top1_mean'])} ± {pct(entry['top1_std'])}"
    )

    clip = rows["bioclip"]
    assert clip["supervised · top-1"] == "—"
    assert clip["zero-shot · macro F1"] == pct(runs[1]["protocols"]["zero-shot"]["macro_f1"])
    assert clip["linear-probe · top-1"] == pct(runs[1]["protocols"]["linear-probe"]["top1"])
    # held-out sources only (the diagonal here), not the in-distribution references
    grid = runs[1]["protocols"]["cross-source"]["top1"]
    held_out = [grid[i][i] for i in range(3)]
    assert clip["cross-source · held-out top-1 (mean)"] == pct(np.mean(held_out))
    assert pct(np.mean(held_out)) != pct(np.mean(grid))


def test_provenance_and_detail_sections(report, runs):
    markdown = report["markdown"].read_text()
    provenance = {row[""]: row["value"] for row in md_table(markdown, "Provenance")}
    assert provenance["store manifest hash"] == "a1b2c3d4e5f6"
    assert provenance["taxonomy version"] == "1.0.0"
    assert provenance["split scheme"] == "stratified"
    assert provenance["label rank"] == "deepest"
    models = {row["model"]: row for row in md_table(markdown, "Provenance", 1)}
    assert models["resnet"]["hash"] == runs[0]["model"]["hash"][:12]
    assert models["bioclip"]["seeds"] == "0, 1, 2"

    # per rank: series labels carry the protocol since several protocols are compared
    per_rank = {row["rank"]: row for row in md_table(markdown, "Per taxonomic rank")}
    phylum = runs[1]["protocols"]["zero-shot"]["per_rank"]["phylum"]
    assert per_rank["phylum"]["bioclip · zero-shot · top-1"] == pct(phylum["top1"])
    assert "species" not in per_rank  # no test image is labelled at species rank

    severity = {row["model"]: row for row in md_table(markdown, "Mistake severity")}
    block = runs[0]["protocols"]["supervised"]["severity"]
    assert severity["resnet · supervised"]["errors"] == str(block["errors"])
    assert severity["resnet · supervised"]["mean LCA depth"] == (
        f"{block['mean_lca_depth_errors']:.2f}"
    )

    per_class = {row["class"]: row for row in md_table(markdown, "Per class")}
    assert set(per_class) == set(CLASSES)
    calanus = runs[0]["protocols"]["supervised"]["per_class"][CLASSES.index("Calanus")]
    assert per_class["Calanus"]["train count"] == "300"
    assert per_class["Calanus"]["support"] == str(calanus["support"])
    assert per_class["Calanus"]["resnet · supervised · F1"] == pct(calanus["f1"])

    matrix = md_table(markdown, "Cross-source generalisation")
    top1 = runs[1]["protocols"]["cross-source"]["top1"]
    assert [row["training fold \\ test"] for row in matrix] == [f"all but {s}" for s in SOURCES]
    assert matrix[0]["ifcb"] == f"{pct(top1[0][0])} †"  # held out of this fold's training
    assert matrix[0]["isiis"] == pct(top1[0][1])
    folds = {row["held out"]: row for row in md_table(markdown, "Cross-source generalisation", 2)}
    assert folds["isiis"]["training sources"] == "ifcb, zooscan"
    assert folds["isiis"]["top-1"] == pct(top1[1][1])


def test_merged_results_round_trip(report, runs, tmp_path):
    merged = json.loads(report["results"].read_text())
    assert merged["format"] == "planktonzilla-comparison"
    assert [r["model"]["name"] for r in merged["runs"]] == ["resnet", "bioclip"]
    # a merged file plus a single run flattens to three runs
    third = save(make_run("effnet", {"supervised": metrics(7, 1.5)}), tmp_path / "effnet.json")
    loaded = load_results([report["results"], third])
    assert [r["model"]["name"] for r in loaded] == ["resnet", "bioclip", "effnet"]
    assert merge_results(loaded)["runs"] == loaded


def test_held_out_cells_follow_the_training_sources():
    # rows named by the one training source: every other column is out of distribution
    single = {"train": ["ifcb", "isiis"], "test": ["ifcb", "isiis", "zooscan"]}
    assert held_out_cells(single) == {(0, 1), (0, 2), (1, 0), (1, 2)}
    # rows "all but X" without fold details
    all_but = {"train": ["all but ifcb", "all but isiis"], "test": ["ifcb", "isiis"]}
    assert held_out_cells(all_but) == {(0, 0), (1, 1)}
    # the folds' training lists win over the labels
    folds = {**all_but, "folds": [{"train_sources": ["isiis"]}, {"train_units": []}]}
    assert held_out_cells(folds) == {(0, 0), (1, 0), (1, 1)}
    assert held_out_cells(None) == set()


def test_run_labels_are_unique():
    a, b, c = (make_run("resnet", {}) for _ in range(3))
    c["model"]["hash"] = "0123456789abcdef"
    d = make_run("bioclip", {})
    assert run_labels([a, b, c, d]) == [
        f"resnet ({a['model']['hash'][:8]}) #1",
        f"resnet ({a['model']['hash'][:8]}) #2",
        "resnet (01234567)",
        "bioclip",
    ]


def test_incompatible_runs_are_refused(tmp_path):
    a = resnet_run()
    b = clip_run(manifest="ffff000011112222", split_seed=1)
    with pytest.raises(IncompatibleResults) as error:
        merge_results([a, b])
    message = str(error.value)
    assert "store manifest hash differs: resnet = a1b2c3d4e5f6, bioclip = ffff00001111" in message
    assert "split info differs (seed): resnet: seed=0; bioclip: seed=1" in message
    with pytest.raises(IncompatibleResults):
        write_report([a, b], tmp_path / "refused")
    assert not (tmp_path / "refused" / "report.html").exists()
    assert len(check_compatible([a, b], force=True)) == 2
    assert check_compatible([a, clip_run()]) == []
    c = make_run("effnet", {"supervised": metrics(7, 1.5)})
    c["rank"] = "genus"
    c["taxonomy_version"] = "1.1.0"
    assert check_compatible([a, c], force=True) == [
        "taxonomy version differs: resnet = 1.0.0, effnet = 1.1.0",
        "rank differs: resnet = deepest, effnet = genus",
    ]


def few_shot_runs(**second) -> list[dict]:
    """Two cheap runs to report (one plot): few-shot only."""
    return [
        make_run("resnet", {"few-shot": few_shot(1)}),
        make_run("effnet", {"few-shot": few_shot(3)}, **second),
    ]


def test_force_shows_warning_banner(tmp_path):
    paths = write_report(few_shot_runs(split_seed=3), tmp_path / "forced", force=True)
    assert [key for key in paths if key.startswith("plots/")] == ["plots/few-shot.png"]
    page = paths["html"].read_text()
    assert 'class="warning"' in page and "not strictly comparable" in page
    assert "split info differs (seed): resnet: seed=0; effnet: seed=3" in page
    assert "> **Warning: these runs are not strictly comparable.**" in (
        paths["markdown"].read_text()
    )
    assert json.loads(paths["results"].read_text())["differences"] == [
        "split info differs (seed): resnet: seed=0; effnet: seed=3"
    ]


def test_cli_report(tmp_path):
    runner = CliRunner()
    runs = few_shot_runs(manifest="ffff000011112222")
    a, b = (save(run, tmp_path / f"{run['model']['name']}.json") for run in runs)
    out = tmp_path / "cli"

    refused = runner.invoke(app, ["report", str(a), str(b), "--out", str(out)])
    assert refused.exit_code == 2
    assert isinstance(refused.exception, SystemExit)  # a message, not a traceback
    assert "store manifest hash differs" in refused.output
    assert "--force" in refused.output
    assert not (out / "report.html").exists()

    forced = runner.invoke(
        app, ["report", str(a), str(b), "--out", str(out), "--force", "--title", "Forced"]
    )
    assert forced.exit_code == 0, forced.output
    assert str(out / "report.html") in forced.output
    assert "<title>Forced</title>" in (out / "report.html").read_text()
    assert "store manifest hash differs" in (out / "report.html").read_text()


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("{not json", "not a JSON file"),
        ('{"format": "something-else", "format_version": 1}', "not a planktonzilla results"),
        ('{"format": "planktonzilla-evaluation", "format_version": 2}', "is newer than"),
        ('{"format": "planktonzilla-comparison", "format_version": 1}', "without a 'runs' list"),
        ("[1, 2]", "expected evaluation results"),
    ],
)
def test_unreadable_results_are_clear_errors(tmp_path, content, expected):
    path = tmp_path / "results.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(expected)) as error:
        load_results([path])
    assert str(path) in str(error.value)

    result = CliRunner().invoke(app, ["report", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)
    assert expected in result.output


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="cannot read results file"):
        load_results(tmp_path / "absent.json")


def test_plots_skip_absent_protocols(tmp_path):
    run = make_run("effnet", {"supervised": metrics(7, 1.5, train_counts=None)})
    del run["protocols"]["supervised"]["per_rank"]
    run["protocols"]["supervised"]["top1"] = np.float32(0.625)  # as evaluate() may leave it
    paths = write_report(run, tmp_path / "single")
    # a single run's folder keeps a run file (evaluate() writes it there too)
    saved = json.loads(paths["results"].read_text())
    assert saved["format"] == "planktonzilla-evaluation"
    assert saved["protocols"]["supervised"]["top1"] == 0.625
    plots_written = sorted(key for key in paths if key.startswith("plots/"))
    assert plots_written == [
        "plots/confusion-effnet.png",
        "plots/f1-vs-frequency.png",
        "plots/reliability.png",
    ]
    assert sorted(p.name for p in (tmp_path / "single" / "plots").iterdir()) == [
        p.removeprefix("plots/") for p in plots_written
    ]
    markdown = paths["markdown"].read_text()
    assert md_table(markdown, "Comparison")[0]["supervised · top-1"] == "62.5"
    for absent in ("## Few-shot", "## Cross-source", "## Per taxonomic rank"):
        assert absent not in markdown
    # train counts unknown: the per-class table prints the dash
    assert {row["train count"] for row in md_table(markdown, "Per class")} == {"—"}

    target = tmp_path / "direct" / "absent.png"
    assert plots.few_shot_curves({"effnet": None}, target) is None
    assert plots.cross_source_heatmap(None, target) is None
    assert plots.rank_bars({"effnet": run["protocols"]["supervised"]}, target) is None
    empty_bins = [{"lower": 0.0, "upper": 1.0, "count": 0, "confidence": None, "accuracy": None}]
    no_samples = {"m": {"reliability": empty_bins, "ece": None}}
    assert plots.reliability_diagram(no_samples, target) is None
    assert plots.confusion_by_phylum({}, LINEAGES, target) is None
    assert not target.exists()


def test_confusion_groups_by_phylum(tmp_path):
    order, groups = plots.phylum_groups(CLASSES, LINEAGES)
    assert [CLASSES[i] for i in order] == [
        "Acartia", "Calanus", "Oithona", "Chaetoceros", "Ditylum", "Thalassiosira"
    ]  # fmt: skip
    assert groups == [("Arthropoda", 0, 3), ("Bacillariophyta", 3, 6)]
    # many classes (tick labels dropped), one without a phylum, an empty row
    names = [f"taxon{i:02d}" for i in range(70)]
    lineages = [{"name": n, "phylum": ["Cnidaria", "Chordata", None][i % 3]} for i, n in
                enumerate(names)]  # fmt: skip
    order, groups = plots.phylum_groups(names, lineages)
    assert [g[0] for g in groups] == ["Chordata", "Cnidaria", plots.NO_PHYLUM]
    matrix = np.random.default_rng(0).integers(0, 5, (70, 70))
    matrix[5] = 0
    path = plots.confusion_by_phylum(
        {"labels": names, "matrix": matrix.tolist()}, lineages, tmp_path / "big.png"
    )
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 1000
