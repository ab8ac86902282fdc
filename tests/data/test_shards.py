"""WebDataset export and training from shards: every object once with its exact bytes and
caption, read by `webdataset` and by open_clip's own pipeline; the shard loader renders like
the store loader, slices global batches per rank (checked with two torchrun processes), and
`pz train --data` trains from shards alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch

from planktonzilla.data.dataset import dataset_view
from planktonzilla.data.export import export_webdataset
from planktonzilla.data.loader import Augment, ImageTable, _BatchKey
from planktonzilla.data.preprocess import PreprocessConfig
from planktonzilla.data.shards import ShardBatchSampler, ShardIndex, make_shard_loader
from planktonzilla.data.splits import make_split
from planktonzilla.models.clip import caption
from planktonzilla.store import ObjectStore
from planktonzilla.synthetic import synthetic_records
from planktonzilla.train.loop import TrainConfig, train

S = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ObjectStore:
    store = ObjectStore(tmp_path_factory.mktemp("shards") / "store")
    store.ingest(synthetic_records("ISIIS", per_class=12), source="synthetic-isiis")
    make_split(store, "stratified", seed=0)
    return store


@pytest.fixture(scope="module")
def export(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wds")
    export_webdataset(store, "stratified", out, samples_per_shard=16)  # several train shards
    return out


def test_every_object_once_with_its_bytes_and_caption(store, export):
    import webdataset as wds

    view = dataset_view(store, "stratified")
    index = json.loads((export / "index.json").read_text())
    stored = store.query("SELECT object_id, image FROM objects").to_pydict()
    images = dict(zip(stored["object_id"], stored["image"], strict=True))
    assert index["classes"] == view.classes
    for side in ("train", "val", "test"):
        rows = view.side(side)
        expected = dict(
            zip(rows["object_id"].to_pylist(), rows["label_index"].to_pylist(), strict=True)
        )
        urls = [str(export / s["url"]) for s in index["sides"][side]["shards"]]
        seen = []
        for sample in wds.WebDataset(urls, shardshuffle=False):
            key = sample["__key__"]
            seen.append(key)
            meta = json.loads(sample["json"])
            assert sample["jpg"] == images[key]  # the original bytes
            assert meta["label_index"] == expected[key]
            assert sample["txt"].decode() == caption(view.class_lineages[expected[key]])
            assert sample["license"].decode() == (meta["license"] or "")
        assert sorted(seen) == sorted(expected)  # each object once
        assert len(seen) == index["sides"][side]["samples"]
    sizes = json.loads((export / "sizes.json").read_text())
    assert sum(sizes.values()) == view.table.num_rows
    assert not list(export.glob(".*.partial"))


def test_open_clip_get_wds_dataset_reads_the_shards(export):
    from open_clip_train.data import get_wds_dataset

    index = json.loads((export / "index.json").read_text())
    n = len(index["sides"]["train"]["shards"])
    args = Namespace(
        train_data=str(export / f"train-{{000000..{n - 1:06d}}}.tar"),
        train_num_samples=None,  # from sizes.json
        dataset_resampled=False,
        train_data_upsampling_factors=None,
        seed=0,
        workers=0,
        world_size=1,
        batch_size=8,
    )

    def preprocess(im):
        return torch.from_numpy(np.array(im.resize((S, S)))).permute(2, 0, 1)

    def tokenizer(texts):
        return torch.tensor([[len(t)] for t in texts])

    info = get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer)
    images, texts = next(iter(info.dataloader))
    assert images.shape == (8, 3, S, S) and texts.shape == (8, 1)
    assert info.dataloader.num_samples >= index["sides"]["train"]["samples"]


def test_shard_items_render_like_the_store_loader(store, export):
    """Same object at the same global position: the same augmented pixels as `ImageTable`."""
    view = dataset_view(store, "stratified")
    train_rows = view.side("train")
    table = ImageTable(store, train_rows, preprocess=PreprocessConfig(size=S))
    where = {oid: i for i, oid in enumerate(train_rows["object_id"].to_pylist())}
    index = ShardIndex.open(str(export))
    sampler = ShardBatchSampler(
        index, "train", batch_size=8, train=True, lanes=2, seed=3, augment=Augment()
    )
    loader = make_shard_loader(
        index,
        "train",
        batch_size=8,
        train=True,
        preprocess=PreprocessConfig(size=S),
        lanes=2,
        seed=3,
    )
    keys = list(sampler)
    workers = make_shard_loader(
        index,
        "train",
        batch_size=8,
        train=True,
        preprocess=PreprocessConfig(size=S),
        lanes=2,
        seed=3,
        workers=2,
    )
    for (images, _), (other, _) in zip(loader, workers, strict=True):  # decoded in processes
        assert torch.equal(images, other)
    for key, (images, labels) in zip(keys[:3], loader, strict=False):
        rows = np.array([where[k] for k in key.object_ids])
        ref, ref_labels = table[_BatchKey(3, 0, key.start, rows, Augment())]
        assert torch.equal(images, ref)
        assert torch.equal(labels, ref_labels)
    # one epoch: full global batches only, no object twice
    ids = [k for key in keys for k in key.object_ids]
    assert len(ids) == len(set(ids)) == len(keys) * 8


def test_epochs_differ_and_resume_skips_exactly(export):
    index = ShardIndex.open(str(export))
    args = {"batch_size": 8, "train": True, "lanes": 2, "seed": 1}
    first = [k.object_ids for k in ShardBatchSampler(index, "train", **args)]
    again = [k.object_ids for k in ShardBatchSampler(index, "train", **args)]
    other = [k.object_ids for k in ShardBatchSampler(index, "train", epoch=1, **args)]
    skipped = ShardBatchSampler(index, "train", skip_batches=2, **args)
    assert first == again and first != other
    assert [k.object_ids for k in skipped] == first[2:] and len(skipped) == len(first) - 2


def test_evaluation_keeps_every_object_and_splits_the_last_batch(export):
    index = ShardIndex.open(str(export))
    n = index.samples("val")
    parts = [
        [
            k
            for key in ShardBatchSampler(
                index, "val", batch_size=4, train=False, rank=r, world_size=2
            )
            for k in key.object_ids
        ]
        for r in (0, 1)
    ]
    whole = [
        k
        for key in ShardBatchSampler(index, "val", batch_size=4, train=False)
        for k in key.object_ids
    ]
    assert len(whole) == n and sorted(parts[0] + parts[1]) == sorted(whole)


def test_lanes_must_fit_the_world_and_the_batch(export):
    index = ShardIndex.open(str(export))
    with pytest.raises(ValueError, match="lanes"):
        ShardBatchSampler(index, "train", batch_size=8, train=True, lanes=3, world_size=2)
    with pytest.raises(ValueError, match="shard"):
        ShardBatchSampler(index, "train", batch_size=64, train=True, lanes=32)


_RANK_SCRIPT = """
import os, sys, torch
from planktonzilla.data.preprocess import PreprocessConfig
from planktonzilla.data.shards import ShardIndex, make_shard_loader
rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
loader = make_shard_loader(ShardIndex.open(sys.argv[1]), "train", batch_size=8, train=True,
                           preprocess=PreprocessConfig(size=32), lanes=2, seed=5, rank=rank,
                           world_size=world)
torch.save([b for b in loader], f"{sys.argv[2]}/rank{rank}-of{world}.pt")
"""


@pytest.mark.ddp
def test_two_torchrun_ranks_read_their_slice_of_the_same_shards(export, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun not installed")
    script = tmp_path / "ranks.py"
    script.write_text(_RANK_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for n in (2, 1):
        command = [
            str(torchrun),
            "--standalone",
            f"--nproc_per_node={n}",
            str(script),
            str(export),
            str(tmp_path),
        ]
        subprocess.run(command, check=True, env=env, timeout=120)
    one = torch.load(tmp_path / "rank0-of1.pt")
    two = [torch.load(tmp_path / f"rank{r}-of2.pt") for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) > 0
    for k, (images, labels) in enumerate(one):
        assert torch.equal(torch.cat([two[0][k][0], two[1][k][0]]), images)
        assert torch.equal(torch.cat([two[0][k][1], two[1][k][1]]), labels)


def test_train_from_shards_alone(export, tmp_path):
    out = tmp_path / "model"
    summary = train(
        TrainConfig(
            data=str(export),
            out=str(out),
            image_size=S,
            batch_size=8,
            epochs=1,
            device="cpu",
            backbone="vit_tiny",
            data_lanes=2,
        )
    )
    config = json.loads((out / "config.json").read_text())
    index = json.loads((export / "index.json").read_text())
    assert summary["steps"] > 0 and summary["test_images"] == index["sides"]["test"]["samples"]
    assert config["classes"] == index["classes"]


def test_cli_export_then_train_from_the_shards(store, tmp_path):
    from typer.testing import CliRunner

    from planktonzilla.cli import app

    runner = CliRunner()
    out = tmp_path / "wds"
    args = ["export", "webdataset", "--store", str(store.path), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 2  # no --split
    result = runner.invoke(app, [*args, "--split", "stratified", "--samples-per-shard", "40"])
    assert result.exit_code == 0, result.output
    assert "train: " in result.output and (out / "train-000001.tar").is_file()
    result = runner.invoke(
        app,
        ["train", "supervised", "--data", str(out), "--out", str(tmp_path / "m"), "--epochs",
         "1", "--batch-size", "8", "--image-size", "32", "--device", "cpu", "--no-progress",
         "--backbone", "vit_tiny", "--data-lanes", "2"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "m" / "config.json").read_text())["classes"]
