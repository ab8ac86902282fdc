"""Evaluation protocols end to end on a small synthetic store (4 instruments x 12 classes):
zero-shot reproduces open_clip's own ranking, the supervised protocol reproduces the model's
predictions, few-shot support comes from the train side only, reruns are identical, features
are computed once, cross-source gives a source x source matrix, and the CLI writes a report."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from planktonzilla.cli import app
from planktonzilla.data.dataset import dataset_view
from planktonzilla.data.loader import make_loader
from planktonzilla.data.splits import make_split
from planktonzilla.evaluate import evaluate
from planktonzilla.evaluate import protocols as P
from planktonzilla.evaluate.features import FeatureCache, load_encoder
from planktonzilla.models import build_model, save_model
from planktonzilla.store import ObjectStore
from planktonzilla.synthetic import INSTRUMENTS, synthetic_records

SIZE = 32
TEXT = {"width": 32, "heads": 2, "layers": 1, "context_length": 24}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ObjectStore:
    store = ObjectStore(tmp_path_factory.mktemp("eval") / "store")
    for name in INSTRUMENTS:
        store.ingest(synthetic_records(name, per_class=5), source=f"synthetic-{name.lower()}")
    make_split(store, "stratified", seed=0)
    make_split(store, "loso", seed=0)
    return store


@pytest.fixture(scope="module")
def models(store, tmp_path_factory) -> dict:
    view = dataset_view(store, "stratified")
    root = tmp_path_factory.mktemp("models")
    out = {}
    for kind in ("supervised", "clip"):
        torch.manual_seed(0)
        config = {
            "kind": kind,
            "backbone": "vit_tiny",
            "image_size": SIZE,
            "classes": view.classes,
            "class_lineages": view.class_lineages,
        }
        if kind == "clip":
            config.update(embed_dim=32, text=TEXT)
        out[kind] = save_model(build_model(config), root / kind, filters=view.filters)
    return out


def _strip(run: dict) -> dict:
    return {k: v for k, v in run.items() if k not in ("created", "timing")}


def test_zero_shot_reproduces_open_clips_own_ranking(store, models, tmp_path):
    import open_clip

    run = evaluate(
        models["clip"], store, "stratified", protocols=["zero-shot"], out=tmp_path, report=False
    )
    block = run["protocols"]["zero-shot"]
    assert block["candidates"] == f"all {len(run['classes'])} classes of the label space"
    # the same images, classes and captions through open_clip's own model and tokenizer
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{models['clip']}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{models['clip']}")
    model.eval()
    view = dataset_view(store, "stratified")
    test = view.side("test")
    texts = [t[0] for t in P.captions(view.class_lineages, "lineage")]
    contract = load_encoder(models["clip"]).preprocess
    predictions = []
    with torch.no_grad():
        text = model.encode_text(tokenizer(texts), normalize=True)
        loader = make_loader(store, test, batch_size=16, preprocess=contract, train=False)
        for images, _ in loader:
            x = contract.normalize(images)
            image = model.encode_image(x, normalize=True)
            predictions.append((image @ text.T).argmax(1))
    pred = torch.cat(predictions).numpy()
    truth = test["label_index"].to_numpy()
    expected = np.zeros((len(view.classes),) * 2, dtype=int)
    np.add.at(expected, (truth, pred), 1)
    assert np.array_equal(np.array(block["confusion"]["matrix"]), expected)


def test_supervised_protocol_scores_the_models_own_predictions(store, models, tmp_path):
    run = evaluate(
        models["supervised"],
        store,
        "stratified",
        protocols=["supervised", "zero-shot"],
        out=tmp_path,
        report=False,
    )
    block = run["protocols"]["supervised"]
    encoder = load_encoder(models["supervised"])
    test = dataset_view(store, "stratified").side("test")
    pred = []
    for images, _ in make_loader(store, test, batch_size=16, image_size=SIZE, train=False):
        pred.append(encoder.model.predict(images))
    pred = torch.cat(pred).numpy()
    truth = test["label_index"].to_numpy()
    assert block["n"] == test.num_rows
    assert block["top1"] == pytest.approx(float(np.mean(pred == truth)))
    assert set(block["per_rank"]) >= {"kingdom", "phylum", "species"}
    assert run["skipped"]["zero-shot"].endswith("not CLIP-style (no text encoder)")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["model"]["hash"] == encoder.identity
    assert saved["store"]["manifest_hash"] == store.manifest_hash()
    assert saved["split"]["scheme"] == "stratified" and saved["taxonomy_version"]


def test_few_shot_support_comes_from_train_only_and_reruns_are_identical(store, models, tmp_path):
    kwargs = {"protocols": ["few-shot", "linear-probe"], "shots": [1, 3], "seeds": [0, 1]}
    first = evaluate(
        models["clip"], store, "stratified", out=tmp_path / "a", report=False, **kwargs
    )
    again = evaluate(
        models["clip"], store, "stratified", out=tmp_path / "b", report=False, **kwargs
    )
    assert _strip(first) == _strip(again)
    assert again["timing"]["images_encoded"] == 0  # every feature came from the cache
    fs = first["protocols"]["few-shot"]
    assert set(fs["methods"]) == {"simpleshot", "logistic"}
    assert [r["seed"] for r in fs["methods"]["simpleshot"]["1"]["runs"]] == [0, 1]
    # a test object among the train ids is refused
    x, y = np.eye(4), np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="both the train and the test side"):
        P.few_shot(x, y, ["a", "b", "c", "d"], x[:1], y[:1], ["c"], 2, shots=[1], seeds=[0])
    # support indices are within the train rows, k per class, and depend only on ids
    support = P.sample_support(np.array([0, 0, 0, 1, 1]), 2, 0, ["e", "d", "c", "b", "a"])
    assert len(support) == 4 and set(support) <= set(range(5))
    permuted = P.sample_support(np.array([1, 1, 0, 0, 0]), 2, 0, ["a", "b", "c", "d", "e"])
    ids = ["e", "d", "c", "b", "a"]
    assert sorted(ids[i] for i in support) == sorted(["a", "b", "c", "d", "e"][i] for i in permuted)


def test_feature_cache_is_keyed_by_the_model(store, models, tmp_path):
    view = dataset_view(store, "stratified")
    a = FeatureCache(store, load_encoder(models["clip"]))
    b = FeatureCache(store, load_encoder(models["supervised"]))
    assert a.key != b.key
    test = view.side("test")
    first = a.features(test)
    assert a.computed in (0, test.num_rows)
    fresh = FeatureCache(store, load_encoder(models["clip"]))
    assert np.array_equal(fresh.features(test), first) and fresh.computed == 0


def test_cross_source_matrix_over_the_four_instruments(store, models, tmp_path):
    run = evaluate(
        models["clip"],
        store,
        "stratified",
        protocols=["cross-source"],
        cross_rank="phylum",
        out=tmp_path,
        report=False,
    )
    block = run["protocols"]["cross-source"]
    sources = sorted(f"synthetic-{n.lower()}" for n in INSTRUMENTS)
    assert block["test"] == sources and block["rank"] == "phylum"
    assert len(block["train"]) == 4 and all(len(r) == 4 for r in block["top1"])
    for r, fold in enumerate(block["folds"]):
        c = sources.index(fold["held_out"])
        assert block["top1"][r][c] == fold["top1"] and 0 <= fold["top1"] <= 1
        assert fold["n_test"] > 0 and fold["held_out"] not in fold["train_units"]


def test_cli_compare_writes_one_report(store, models, tmp_path):
    out = tmp_path / "cmp"
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(models["supervised"]),
            str(models["clip"]),
            "--store",
            str(store.path),
            "--split",
            "stratified",
            "--protocol",
            "compare",
            "--shots",
            "1",
            "--seeds",
            "0",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert (out / "report.html").is_file() and (out / "report.md").is_file()
    merged = json.loads((out / "results.json").read_text())
    assert [r["model"]["kind"] for r in merged["runs"]] == ["supervised", "clip"]
    assert "zero-shot" in merged["runs"][1]["protocols"]
    bad = CliRunner().invoke(
        app, ["evaluate", str(models["clip"]), "--store", str(store.path), "--split", "nope"]
    )
    assert bad.exit_code == 2 and "no split 'nope'" in bad.output


def test_zero_shot_of_an_open_clip_spec_matches_open_clip(store, models, tmp_path):
    """The same weights loaded as a foundation model (open_clip's own preprocessing)."""
    import open_clip
    from PIL import Image

    from planktonzilla.data.loader import ImageTable

    spec = f"local-dir:{models['clip']}"
    run = evaluate(
        spec,
        store,
        "stratified",
        protocols=["supervised", "zero-shot"],
        caption_style="lineage",
        out=tmp_path,
        report=False,
    )
    assert run["model"]["kind"] == "open_clip" and "supervised" in run["skipped"]
    model, _, preprocess = open_clip.create_model_and_transforms(spec)
    tokenizer = open_clip.get_tokenizer(spec)
    model.eval()
    view = dataset_view(store, "stratified")
    test = view.side("test")
    images = ImageTable(store, test, image_size=SIZE)
    texts = [t[0] for t in P.captions(view.class_lineages, "lineage")]
    with torch.no_grad():
        text = model.encode_text(tokenizer(texts), normalize=True)
        x = torch.stack(
            [
                preprocess(Image.open(io.BytesIO(images.image_bytes(i))).convert("RGB"))
                for i in range(len(images))
            ]
        )
        pred = (model.encode_image(x, normalize=True) @ text.T).argmax(1).numpy()
    expected = np.zeros((len(view.classes),) * 2, dtype=int)
    np.add.at(expected, (test["label_index"].to_numpy(), pred), 1)
    assert np.array_equal(np.array(run["protocols"]["zero-shot"]["confusion"]["matrix"]), expected)


def test_cross_source_with_one_model_per_fold(store, tmp_path):
    """A directory of loso-<source> models: each fold's own model predicts its held-out
    source, read at the phylum rank."""
    from planktonzilla.data.splits import list_splits

    folds = tmp_path / "folds"
    for name in (s for s in list_splits(store) if s.startswith("loso-")):
        view = dataset_view(store, name, rank="class")
        torch.manual_seed(0)
        config = {
            "kind": "supervised",
            "backbone": "vit_tiny",
            "image_size": SIZE,
            "classes": view.classes,
            "class_lineages": view.class_lineages,
        }
        save_model(build_model(config), folds / name, filters=view.filters)
    run = evaluate(folds, store, "loso", protocols=["cross-source"], out=tmp_path / "r")
    block = run["protocols"]["cross-source"]
    assert block["method"].startswith("each fold's own model")
    assert len(block["folds"]) == 4 and block["rank"] == "phylum"
    for fold in block["folds"]:
        assert fold["model"].endswith(f"loso-{fold['held_out']}") and len(fold["model_hash"]) == 64
    assert (tmp_path / "r" / "report.html").is_file()
    with pytest.raises(ValueError, match="only cross-source"):
        evaluate(folds, store, "loso", protocols=["few-shot"])


def test_few_shot_learns_separable_features():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(6, 16))

    def sample(n):
        y = rng.integers(0, 6, n)
        return centers[y] + rng.normal(scale=1.0, size=(n, 16)), y

    (xt, yt), (xs, ys) = sample(300), sample(200)
    out = P.few_shot(
        xt,
        yt,
        [f"t{i}" for i in range(300)],
        xs,
        ys,
        [f"s{i}" for i in range(200)],
        6,
        shots=[1, 10],
        seeds=[0, 1, 2],
    )
    for per_k in out["methods"].values():
        assert per_k["10"]["top1_mean"] > per_k["1"]["top1_mean"] > 1 / 6
        assert per_k["10"]["top1_mean"] > 0.9
