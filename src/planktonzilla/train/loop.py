"""The training loop: plain PyTorch, one code path for 1 or N processes.

    train(TrainConfig(kind="supervised", store="store", split="stratified", out="model"))
    torchrun --nproc_per_node 4 -m planktonzilla.cli train supervised …   # same, 4 processes

- AdamW (no weight decay on biases, norms, embeddings, logit scale), linear warmup then
  cosine decay, gradient clipping, gradient accumulation (`accum` loader batches per step);
- bf16 autocast on GPU, fp32 on CPU; optional `torch.compile`;
- DistributedDataParallel when launched by `torchrun` (``WORLD_SIZE`` > 1; gloo on CPU, nccl
  on GPU). `batch_size` is the *global* batch: every rank takes its contiguous slice of each
  global batch, so W processes × B/W train exactly like 1 process × B (CLIP's contrastive
  loss is computed over the gathered global batch);
- ``checkpoint.pt`` every `checkpoint_every` steps and at each epoch's end (model, optimizer,
  scheduler, step, epoch, position in the epoch, every rank's RNG states), written
  atomically; `resume` continues exactly: same next batch, same optimizer state;
- ``train_log.jsonl``: one line per step (loss, lr, images/s) and per epoch (train loss,
  validation loss and top-1), and the final test figures;
- the model directory (`planktonzilla.models.save_model`) at the end.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from planktonzilla.fileio import atomic_path
from planktonzilla.models import (
    DEFAULT_BACKBONE,
    PlanktonModel,
    build_model,
    resolve_device,
    save_model,
)
from planktonzilla.train.losses import contrastive_loss, make_loss

CHECKPOINT = "checkpoint.pt"
LOG = "train_log.jsonl"
KINDS = ("supervised", "clip")


@dataclass
class TrainConfig:
    """Everything a training run depends on (the CLI and TOML files set these by name)."""

    kind: str = "supervised"  # supervised | clip
    store: str = ""
    split: str = "stratified"  # a split table name (`pz split`)
    data: str = ""  # a `pz export webdataset` folder or fsspec URL: train from its shards instead
    data_lanes: int = 0  # shard streams (see data.shards); 0: the world size
    out: str = "model"
    # data
    rank: str = "deepest"  # label rank: deepest | kingdom … species
    plankton_only: bool = True
    living_only: bool = False
    min_per_class: int = 1
    image_size: int = 64
    fill: str | int = "auto"  # padding: auto (one level from the training images) | border | 0-255
    balanced: bool = False  # class-balanced sampling
    workers: int = 0
    # model
    backbone: str = DEFAULT_BACKBONE
    pretrained: str | None = None  # local weights file, or "timm" (online)
    head_ranks: list[str] = field(default_factory=list)  # supervised: extra per-rank heads
    rank_loss_weight: float = 0.5
    caption_style: str = "lineage"  # clip: lineage | bioclip
    embed_dim: int = 256
    text: dict[str, Any] = field(default_factory=dict)  # clip: open_clip text_cfg overrides
    # loss
    loss: str = "ce"  # ce | focal | ldam | balanced_softmax | logit_adjust
    label_smoothing: float = 0.1  # ce only
    loss_params: dict[str, Any] = field(default_factory=dict)  # gamma, tau, max_margin…
    # optimisation
    epochs: int = 10
    batch_size: int = 128  # global batch, all ranks together
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: float = 0.05  # a fraction of all steps (< 1) or a number of steps
    min_lr: float = 0.0
    grad_clip: float = 1.0  # 0: off
    accum: int = 1
    # running
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "auto"  # auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32
    compile: bool = False
    seed: int = 0
    resume: bool = False
    checkpoint_every: int = 0  # steps; 0: only at each epoch's end
    progress: bool = False
    halt_after_step: int | None = None  # stop after this step as if killed (tests, time boxes)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.fill not in ("auto", "border") and not (
            isinstance(self.fill, int) and 0 <= self.fill <= 255
        ):
            raise ValueError(f"fill must be auto, border or a level 0-255, got {self.fill!r}")
        for name in ("epochs", "batch_size", "accum", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training setting(s): {', '.join(unknown)}")
        return cls(**values)


# ------------------------------------------------------------------ processes
@dataclass
class Distributed:
    """This process's place: rank, world size, device (from torchrun's environment)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> Distributed:
        import torch.distributed as dist

        device = resolve_device(device).type
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        dev = torch.device(f"cuda:{local}" if device.startswith("cuda") else "cpu")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world == 1:
            return cls(device=dev)
        owns = False
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
            owns = True
        return cls(dist.get_rank(), dist.get_world_size(), local, dev, owns)

    def all_mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            value = value.detach().clone()
            dist.all_reduce(value)
            value /= self.world_size
        return value

    def all_sum(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.all_reduce(value)
        return value

    def gather(self, tensor: torch.Tensor, grad: bool = False) -> torch.Tensor:
        """Concatenate every rank's tensor (same shape on all ranks) in rank order."""
        if self.world_size == 1:
            return tensor
        import torch.distributed as dist

        if grad:
            from torch.distributed.nn.functional import all_gather

            return torch.cat(all_gather(tensor), 0)
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts, 0)

    def gather_objects(self, obj) -> list:
        if self.world_size == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world_size > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()


# ------------------------------------------------------------------ optimisation
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay for 1-d parameters (biases, norms, logit scale) and embeddings
    (position / class tokens, token embedding)."""
    skip_names = set()
    for module_name, module in model.named_modules():
        names = getattr(module, "no_weight_decay", None)
        if callable(names):
            prefix = f"{module_name}." if module_name else ""
            skip_names |= {prefix + n for n in names()}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name in skip_names or "token_embedding" in name
        skip = skip or name.endswith(("pos_embed", "cls_token", "positional_embedding"))
        (no_decay if skip else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def warmup_cosine(total_steps: int, warmup_steps: int, min_ratio: float = 0.0):
    """LR multiplier: linear warmup from 1/warmup to 1, then cosine to `min_ratio`."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


class Trainer:
    """One model's optimisation: forward under autocast, loss, backward (with DDP gradient
    sync only on the last micro-batch of a step), clipping, AdamW, LR schedule."""

    def __init__(
        self,
        model: PlanktonModel,
        cfg: TrainConfig,
        *,
        class_counts: np.ndarray,
        total_steps: int,
        dist: Distributed | None = None,
    ):
        self.cfg = cfg
        self.dist = dist or Distributed()
        self.device = self.dist.device
        self.module = model.to(self.device)
        precision = cfg.precision
        if precision == "auto":
            precision = "bf16" if self.device.type == "cuda" else "fp32"
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.model: torch.nn.Module = self.module
        if self.dist.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        if cfg.compile:
            self.model = torch.compile(self.model)
        self.optimizer = torch.optim.AdamW(
            param_groups(self.module, cfg.weight_decay),
            lr=cfg.lr,
            betas=(0.9, 0.999),
            fused=self.device.type == "cuda",
        )
        warmup = int(cfg.warmup * total_steps) if cfg.warmup < 1 else int(cfg.warmup)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            warmup_cosine(total_steps, max(1, warmup), cfg.min_lr / cfg.lr if cfg.lr else 0.0),
        )
        self.criteria = {}
        if model.kind == "supervised":
            loss_params = dict(cfg.loss_params)
            if cfg.loss == "ce":
                loss_params.setdefault("label_smoothing", cfg.label_smoothing)
            self.criteria["classes"] = make_loss(cfg.loss, class_counts, **loss_params)
            for rank in model.config.get("head_ranks", []):
                targets = getattr(model, f"_to_{rank}").cpu().numpy()
                n = len(model.config["rank_classes"][rank])
                counts = np.zeros(n)
                np.add.at(counts, targets[targets >= 0], class_counts[targets >= 0])
                self.criteria[rank] = make_loss(cfg.loss, counts, **loss_params)

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def loss(self, out: dict) -> torch.Tensor:
        if "image" in out:  # CLIP: contrastive over the global batch
            image = self.dist.gather(out["image"].float(), grad=True)
            text = self.dist.gather(out["text"].float(), grad=True)
            ids = self.dist.gather(out["caption_ids"])
            return contrastive_loss(image, text, out["logit_scale"].float(), ids)
        total = 0.0
        for head, (logits, target) in out.items():
            weight = 1.0 if head == "classes" else self.cfg.rank_loss_weight
            total = total + weight * self.criteria[head](logits, target)
        return total

    def micro_step(
        self, images: torch.Tensor, labels: torch.Tensor, *, sync: bool = True, scale: float = 1.0
    ) -> torch.Tensor:
        """Forward + backward of one loader batch (uint8 images); returns the detached loss."""
        x = self.module.normalize(images)
        labels = labels.to(self.device, non_blocking=True)
        no_sync = getattr(self.model, "no_sync", None)
        with nullcontext() if sync or no_sync is None else no_sync():
            with self.autocast():
                loss = self.loss(self.model(x, labels))
            (loss * scale).backward()
        return loss.detach()

    def optimizer_step(self) -> float:
        lr = self.optimizer.param_groups[0]["lr"]
        if self.cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        clamp = getattr(self.module, "clamp_logit_scale", None)
        if clamp is not None:
            clamp()
        return lr

    def train_step(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One full optimisation step on one batch (no accumulation)."""
        loss = self.micro_step(images, labels)
        self.optimizer_step()
        return loss

    @torch.no_grad()
    def evaluate(self, loader) -> dict[str, float | None]:
        """Cross-entropy and top-1 of the class logits over a loader (summed over ranks)."""
        was_training = self.module.training
        self.module.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        for images, labels in loader:
            labels = labels.to(self.device)
            with self.autocast():
                logits = self.module(self.module.normalize(images)).float()
            totals[0] += F.cross_entropy(logits, labels, reduction="sum").double()
            totals[1] += (logits.argmax(-1) == labels).sum()
            totals[2] += len(labels)
        self.module.train(was_training)
        loss, correct, n = self.dist.all_sum(totals).tolist()
        if not n:
            return {"loss": None, "top1": None, "n": 0}
        return {"loss": loss / n, "top1": correct / n, "n": int(n)}


# ------------------------------------------------------------------ state on disk
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss]
    version, internal, py_gauss = random.getstate()
    state["python"] = [version, list(internal), py_gauss]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, py_gauss = state["python"]
    random.setstate((version, tuple(internal), py_gauss))


def save_checkpoint(path: Path, trainer: Trainer, *, step: int, epoch: int, batch: int) -> None:
    """Everything `resume` needs, written by atomic rename (rank 0 writes; all ranks' RNG
    states are gathered first)."""
    rng = trainer.dist.gather_objects(_rng_state())
    if not trainer.dist.main:
        return
    state = {
        "model": trainer.module.state_dict(),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "batch": batch,
        "world_size": trainer.dist.world_size,
        "rng": rng,
        "config": json.dumps(asdict(trainer.cfg), default=str),
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Path, trainer: Trainer) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG; returns step/epoch/batch."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state["world_size"] != trainer.dist.world_size:
        raise ValueError(
            f"{path} was written by {state['world_size']} process(es); resume with as many"
        )
    trainer.module.load_state_dict(state["model"])
    trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"][trainer.dist.rank])
    return {k: state[k] for k in ("step", "epoch", "batch")}


class JsonLog:
    """``train_log.jsonl``, written by rank 0; on resume, lines past the checkpoint's step are
    dropped (they belong to the run that was killed)."""

    def __init__(self, path: Path, enabled: bool, keep_until_step: int | None):
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        kept = []
        if keep_until_step is not None and path.exists():
            for line in path.read_text().splitlines():
                if line.strip() and json.loads(line).get("step", 0) <= keep_until_step:
                    kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(record, default=float) + "\n")


# ------------------------------------------------------------------ the run
def _progress(enabled: bool, total: int, done: int):
    if not enabled:
        return nullcontext(None)
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("[bold]training"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeRemainingColumn(),
        transient=False,
    )
    bar.add_task("train", total=total, completed=done, status="")
    return bar


def model_config(cfg: TrainConfig, view, fill: str | int = "border") -> dict[str, Any]:
    config: dict[str, Any] = {
        "kind": cfg.kind,
        "backbone": cfg.backbone,
        "preprocess": {"size": cfg.image_size, "fill": fill},
        "classes": list(view.classes),
        "class_lineages": list(view.class_lineages),
    }
    if cfg.kind == "supervised":
        config["head_ranks"] = list(cfg.head_ranks)
    else:
        config.update(caption_style=cfg.caption_style, embed_dim=cfg.embed_dim, text=cfg.text)
    return config


#: Training images the "auto" fill is estimated from.
FILL_SAMPLE = 256


def resolve_fill(fill: str | int, images) -> str | int:
    """The contract's fill: "auto" becomes one level, the median border level of `images()`:
    up to `FILL_SAMPLE` training images (the same on every rank: chosen by object id)."""
    if fill != "auto":
        return fill
    from planktonzilla.data.preprocess import estimate_fill

    return estimate_fill(images())


def _first_images(store, train_table) -> list[bytes]:
    ids = sorted(train_table["object_id"].to_pylist())[:FILL_SAMPLE]
    con = store.connect()
    try:
        rows = con.execute(
            "SELECT image FROM objects_raw WHERE object_id IN (SELECT unnest(?::VARCHAR[]))",
            [ids],
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows if r[0] is not None]


def train(cfg: TrainConfig | dict[str, Any]) -> dict[str, Any]:
    """Train a model as `cfg` says; returns a summary (steps, final metrics, output
    directory). Under torchrun, every process calls this."""
    from planktonzilla.data.dataset import dataset_view
    from planktonzilla.data.loader import make_loader
    from planktonzilla.store import ObjectStore
    from planktonzilla.taxonomy import mapping_version

    if isinstance(cfg, dict):
        cfg = TrainConfig.from_dict(cfg)
    dist = Distributed.from_env(cfg.device)
    try:
        out = Path(cfg.out)
        if dist.main:
            out.mkdir(parents=True, exist_ok=True)
        dist.barrier()
        if cfg.data:  # the label space, filters and split come with the shards (index.json)
            from planktonzilla.data.shards import ShardIndex, make_shard_loader

            if cfg.balanced:
                raise ValueError("class-balanced sampling needs the store (--store), not --data")
            view = shards = ShardIndex.open(cfg.data)
            train_images = shards.samples("train")
            counts = shards.class_counts("train").astype(np.float64)
            test_counts = shards.class_counts("test")
        else:
            store = ObjectStore(cfg.store)
            view = dataset_view(
                store,
                cfg.split,
                rank=cfg.rank,
                plankton_only=cfg.plankton_only,
                living_only=cfg.living_only,
                min_per_class=cfg.min_per_class,
            )
            train_table = view.side("train")
            train_images = train_table.num_rows
            labels = train_table["label_index"].to_numpy(zero_copy_only=False)
            counts = np.bincount(labels, minlength=view.num_classes).astype(np.float64)
            test_labels = view.side("test")["label_index"].to_numpy(zero_copy_only=False)
            test_counts = np.bincount(test_labels, minlength=view.num_classes)
        if not train_images:
            raise ValueError(f"split {view.scheme!r} has no training images after the filters")

        torch.manual_seed(cfg.seed)
        if cfg.data:  # the same images as from the store: those of the smallest ids
            fill = resolve_fill(cfg.fill, lambda: shards.first_images("train", FILL_SAMPLE))
        else:
            fill = resolve_fill(cfg.fill, lambda: _first_images(store, train_table))
        model = build_model(model_config(cfg, view, fill), pretrained=cfg.pretrained)
        loader_args = {
            "preprocess": model.preprocess,
            "seed": cfg.seed,
            "rank": dist.rank,
            "world_size": dist.world_size,
            "workers": cfg.workers,
        }
        if cfg.data:
            loader = make_shard_loader(
                shards,
                "train",
                batch_size=cfg.batch_size,
                train=True,
                lanes=cfg.data_lanes or None,
                **loader_args,
            )
        else:
            loader = make_loader(
                store,
                train_table,
                batch_size=cfg.batch_size,
                train=True,
                balanced=cfg.balanced,
                **loader_args,
            )
        batches = len(loader)  # global batches per epoch (every rank gets a slice of each)
        if not batches:
            raise ValueError(
                f"{train_images} training images make no full batch of {cfg.batch_size}"
            )
        steps_per_epoch = math.ceil(batches / cfg.accum)
        total_steps = cfg.epochs * steps_per_epoch
        trainer = Trainer(model, cfg, class_counts=counts, total_steps=total_steps, dist=dist)

        def eval_loader(side: str):
            if cfg.data:
                if not shards.samples(side):
                    return None
                return make_shard_loader(
                    shards, side, batch_size=cfg.batch_size, train=False, **loader_args
                )
            table = view.side(side)
            if not table.num_rows:
                return None
            return make_loader(store, table, batch_size=cfg.batch_size, train=False, **loader_args)

        val_loader = eval_loader("val")

        ckpt_path = out / CHECKPOINT
        step, epoch, batch = 0, 0, 0
        if cfg.resume and ckpt_path.exists():
            position = load_checkpoint(ckpt_path, trainer)
            step, epoch, batch = position["step"], position["epoch"], position["batch"]
        elif cfg.resume and dist.main:
            print(f"no checkpoint in {out}: starting from scratch")
        log = JsonLog(out / LOG, dist.main, step if cfg.resume else None)
        if dist.main and not cfg.resume:
            log.write(
                event="start",
                step=0,
                world_size=dist.world_size,
                train_images=train_images,
                classes=view.num_classes,
                steps=total_steps,
                config=asdict(cfg),
            )

        images_per_step = cfg.batch_size * cfg.accum
        progress = _progress(cfg.progress and dist.main, total_steps, step)
        halted = False
        val: dict[str, Any] = {}
        with progress as bar:
            while epoch < cfg.epochs and not halted:
                loader.sampler.set_epoch(epoch, skip_batches=batch)
                trainer.module.train()
                epoch_loss, epoch_steps, epoch_start = 0.0, 0, time.perf_counter()
                tick = time.perf_counter()
                step_loss = torch.zeros((), device=dist.device)
                for images, labels in loader:
                    group_start = batch - batch % cfg.accum
                    group = min(cfg.accum, batches - group_start)
                    last = batch + 1 == group_start + group
                    loss = trainer.micro_step(images, labels, sync=last, scale=1.0 / group)
                    step_loss += loss / group
                    batch += 1
                    if not last:
                        continue
                    lr = trainer.optimizer_step()
                    step += 1
                    value = float(dist.all_mean(step_loss))
                    step_loss = torch.zeros((), device=dist.device)
                    now = time.perf_counter()
                    rate = cfg.batch_size * group / (now - tick)
                    tick = now
                    epoch_loss += value
                    epoch_steps += 1
                    log.write(
                        event="step", step=step, epoch=epoch, loss=value, lr=lr, images_per_s=rate
                    )
                    if bar is not None:
                        bar.update(
                            bar.task_ids[0],
                            advance=1,
                            status=f"epoch {epoch + 1}/{cfg.epochs} loss {value:.4f}",
                        )
                    if batch == batches:
                        epoch, batch = epoch + 1, 0
                    if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        save_checkpoint(ckpt_path, trainer, step=step, epoch=epoch, batch=batch)
                    if cfg.halt_after_step is not None and step >= cfg.halt_after_step:
                        halted = True
                        break
                    if batch == 0:  # the epoch is over (the loader is exhausted)
                        break
                if halted:
                    break
                seconds = time.perf_counter() - epoch_start
                val = trainer.evaluate(val_loader) if val_loader is not None else {}
                log.write(
                    event="epoch",
                    step=step,
                    epoch=epoch,
                    train_loss=epoch_loss / max(1, epoch_steps),
                    val_loss=val.get("loss"),
                    val_top1=val.get("top1"),
                    images_per_s=epoch_steps * images_per_step / seconds if seconds else None,
                    seconds=seconds,
                )
                if not (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                    save_checkpoint(ckpt_path, trainer, step=step, epoch=epoch, batch=batch)
        summary: dict[str, Any] = {"out": str(out), "steps": step, "halted": halted}
        if halted:
            return summary
        test_loader = eval_loader("test")
        test = trainer.evaluate(test_loader) if test_loader is not None else {}
        n_test = int(test_counts.sum())
        majority = float(test_counts[int(np.argmax(counts))] / n_test) if n_test else None
        metrics = {
            "val_loss": val.get("loss"),
            "val_top1": val.get("top1"),
            "test_loss": test.get("loss"),
            "test_top1": test.get("top1"),
            "test_images": test.get("n", 0),
            "test_majority_top1": majority,
        }
        log.write(event="end", step=step, **metrics)
        summary.update(metrics)
        if dist.main:
            save_model(
                trainer.module,
                out,
                taxonomy_version=mapping_version(),
                store_manifest_hash=view.manifest_hash,
                split={"name": view.scheme, "info": view.split_info},
                filters=view.filters,
                class_counts_train=counts.astype(int).tolist(),
                training={**asdict(cfg), "world_size": dist.world_size, "steps": step},
                metrics=metrics,
            )
        dist.barrier()
        return summary
    finally:
        dist.close()
