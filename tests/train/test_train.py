"""The training loop on a small synthetic store: it learns, 2 torchrun processes (gloo) train
exactly like 1 process with the same global batch, a killed run resumes exactly, and the model
directory reloads to the same predictions."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from planktonzilla.data.dataset import dataset_view
from planktonzilla.data.loader import make_loader
from planktonzilla.data.splits import make_split
from planktonzilla.models import load_model
from planktonzilla.store import ObjectStore
from planktonzilla.synthetic import synthetic_records
from planktonzilla.train.loop import TrainConfig, train

pytestmark = pytest.mark.slow  # every test here trains a model

TINY = {
    "image_size": 32,
    "batch_size": 16,
    "backbone": "vit_tiny",
    "embed_dim": 32,
    "text": {"width": 32, "heads": 2, "layers": 1, "context_length": 16},
    "device": "cpu",
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> ObjectStore:
    store = ObjectStore(tmp_path_factory.mktemp("train") / "store")
    store.ingest(synthetic_records("ISIIS", per_class=12), source="synthetic-isiis")
    make_split(store, "stratified", seed=0)
    return store


def run(store, out, **settings):
    return train(
        TrainConfig(store=str(store.path), split="stratified", out=str(out), **{**TINY, **settings})
    )


def log(out) -> list[dict]:
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]


def step_losses(out) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in log(out) if r["event"] == "step"}


def test_supervised_learns_and_reloads_identically(store, tmp_path):
    out = tmp_path / "sup"
    summary = run(store, out, epochs=6, lr=2e-3, label_smoothing=0.0, head_ranks=["phylum"])
    losses = list(step_losses(out).values())
    assert len(losses) == summary["steps"] == 6 * 4
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4  # it learns
    epochs = [r for r in log(out) if r["event"] == "epoch"]
    assert len(epochs) == 6 and all(0 <= r["val_top1"] <= 1 for r in epochs)
    assert all(r["images_per_s"] > 0 and r["lr"] > 0 for r in log(out) if r["event"] == "step")
    config = json.loads((out / "config.json").read_text())
    view = dataset_view(store, "stratified")
    assert config["classes"] == view.classes and config["class_lineages"] == view.class_lineages
    assert config["store_manifest_hash"] == store.manifest_hash()
    assert config["split"]["name"] == "stratified" and config["filters"]["rank"] == "deepest"
    assert config["taxonomy_version"] and config["code_version"] and config["kind"] == "supervised"
    assert config["training"]["head_ranks"] == ["phylum"]
    assert isinstance(config["preprocess"]["fill"], int)  # "auto": one level from the data
    # the reloaded model gives the test figures the run measured
    model = load_model(out)
    contract = model.preprocess
    loader = make_loader(store, view.side("test"), batch_size=8, preprocess=contract, train=False)
    correct = n = 0
    for x, y in loader:
        correct += int((model.predict(x) == y).sum())
        n += len(y)
    assert n == summary["test_images"] and correct / n == pytest.approx(summary["test_top1"])


def test_clip_trains_and_reloads(store, tmp_path):
    out = tmp_path / "clip"
    summary = run(store, out, kind="clip", epochs=3, lr=2e-3)
    losses = list(step_losses(out).values())
    assert sum(losses[-3:]) < sum(losses[:3])
    assert (out / "open_clip_model.safetensors").is_file()
    exported = json.loads((out / "open_clip_config.json").read_text())
    # the timm ViT is exported as open_clip's own ViT, at the trained size
    assert exported["model_cfg"]["vision_cfg"]["image_size"] == 32
    assert exported["preprocess_cfg"]["resize_mode"] == "longest"
    model = load_model(out)
    assert model.kind == "clip" and 0 <= summary["test_top1"] <= 1
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    assert torch.equal(model.predict_logits(x), load_model(out).predict_logits(x))


@pytest.mark.parametrize("kind", ["supervised", "clip"])
def test_resume_after_kill_reproduces_the_uninterrupted_run(store, tmp_path, kind):
    settings = {"kind": kind, "epochs": 2, "lr": 2e-3}
    straight = tmp_path / "straight"
    run(store, straight, **settings)
    killed = tmp_path / "killed"
    # checkpoint at step 3, die at step 5 or 6 (epoch 2): resume from step 3
    halted = run(
        store,
        killed,
        checkpoint_every=3,
        halt_after_step=6 if kind == "supervised" else 5,
        **settings,
    )
    assert halted["halted"] and not (killed / "model.safetensors").exists()
    run(store, killed, checkpoint_every=3, resume=True, **settings)
    a, b = step_losses(straight), step_losses(killed)
    assert list(a) == list(b) == list(range(1, 9))  # the killed run's extra steps were dropped
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-6)
    wa, wb = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    for k in wa:
        assert torch.allclose(wa[k], wb[k], atol=1e-6), k


def _torchrun(nproc: int, store, out, kind: str, *extra: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    # fmt: off
    command = [
        str(torchrun), "--standalone", f"--nproc_per_node={nproc}", "-m", "planktonzilla.train",
        kind, "--store", str(store.path), "--split", "stratified", "--out", str(out),
        "--epochs", "1", "--batch-size", "16", "--image-size", "32", "--device", "cpu",
        "--lr", str(DDP_LR), "--no-progress", *extra,
    ]
    # fmt: on
    if kind == "clip":
        config = out.parent / f"{out.name}.toml"
        config.write_text(
            "embed_dim = 32\n[text]\nwidth = 32\nheads = 2\nlayers = 1\ncontext_length = 16\n"
        )
        command += ["--config", str(config)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def test_sigkill_then_resume_ends_with_the_uninterrupted_weights(store, tmp_path):
    """A real process, killed with SIGKILL mid-epoch, resumed from its last checkpoint."""
    import signal
    import time

    settings = {"epochs": 2, "lr": 2e-3}
    straight = tmp_path / "straight"
    run(store, straight, **settings)
    killed = tmp_path / "killed"
    # fmt: off
    cmd = [
        sys.executable, "-m", "planktonzilla.train", "supervised", "--store", str(store.path),
        "--split", "stratified", "--out", str(killed), "--image-size", "32", "--batch-size",
        "16", "--backbone", "vit_tiny", "--epochs", "2", "--lr", "0.002", "--device", "cpu",
        "--checkpoint-every", "1", "--no-progress",
    ]
    # fmt: on
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    logged = killed / "train_log.jsonl"
    while time.time() < deadline and proc.poll() is None:
        if logged.exists() and len(step_losses(killed)) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.safetensors").exists(), "the run finished before the kill"
    assert (killed / "checkpoint.pt").exists()
    run(store, killed, checkpoint_every=1, resume=True, **settings)
    a, b = step_losses(straight), step_losses(killed)
    assert list(a) == list(b)
    for s in a:
        assert b[s] == pytest.approx(a[s], abs=1e-6)
    wa, wb = load_file(straight / "model.safetensors"), load_file(killed / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6)


DDP_LR = 0.002


@pytest.mark.ddp
@pytest.mark.slow
@pytest.mark.parametrize("kind", ["supervised", "clip"])
def test_two_process_ddp_equals_one_process(store, tmp_path, kind):
    """What DDP guarantees, not bit-equality: both runs see the same global batches (each rank
    its slice: checked exactly by the loader tests), so the first loss, computed from identical
    weights, matches to float-summation noise, and one optimizer step later the weights agree
    except where Adam turned summation noise into a step. (Bit-level agreement after several
    Adam steps depends on the CPU's float reduction order: it held on one CPU, not another.)"""
    if shutil.which("torchrun") is None and not Path(sys.executable).with_name("torchrun").exists():
        pytest.skip("torchrun not installed")
    for n in (2, 1):
        extra = ("--halt-after-step", "1", "--checkpoint-every", "1")
        _torchrun(n, store, tmp_path / f"w{n}", kind, *extra)
    one, two = step_losses(tmp_path / "w1"), step_losses(tmp_path / "w2")
    assert list(one) == list(two) == [1]
    # a mean over 16 images of float32 losses summed in another order: ~1e-7 relative
    assert two[1] == pytest.approx(one[1], rel=1e-5)
    w1 = torch.load(tmp_path / "w1" / "checkpoint.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "w2" / "checkpoint.pt", weights_only=True)["model"]
    assert w1.keys() == w2.keys()
    close = total = 0
    for k in w1:
        a, b = w1[k].float(), w2[k].float()
        # Adam's first step moves a weight by at most lr (|m / sqrt(v)| <= 1) whatever its
        # gradient, so no weight can differ by more than 2 lr between the runs ...
        assert (a - b).abs().max() <= 2 * DDP_LR + 1e-6, k
        # ... and weights whose gradient is far above float noise move identically: all but
        # the near-zero-gradient ones (the attention key bias has an exactly-zero gradient)
        close += int(torch.isclose(a, b, rtol=1e-4, atol=1e-6).sum())
        total += a.numel()
    assert close / total > 0.99, f"only {close / total:.4%} of the weights agree"
    start = [r for r in log(tmp_path / "w2") if r["event"] == "start"][0]
    assert start["world_size"] == 2
