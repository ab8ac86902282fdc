"""Models and losses: the backbone factory, both model kinds, the model directory (reload
predicts identically, open_clip can read CLIP models), and every loss on hand-made logits."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from planktonzilla.models import build_model, create_backbone, load_model, save_model
from planktonzilla.models.backbone import read_state_dict
from planktonzilla.train.losses import (
    LOSSES,
    contrastive_loss,
    contrastive_loss_from_logits,
    make_loss,
)

LINEAGES = [
    {
        "kingdom": "Animalia",
        "phylum": "Arthropoda",
        "class": "Copepoda",
        "order": "Calanoida",
        "name": "Calanoida",
        "rank": "order",
    },
    {
        "kingdom": "Animalia",
        "phylum": "Arthropoda",
        "class": "Copepoda",
        "name": "Copepoda",
        "rank": "class",
    },
    {"kingdom": "Animalia", "phylum": "Chaetognatha", "name": "Chaetognatha", "rank": "phylum"},
]
CLASSES = ["Calanoida", "Copepoda", "Chaetognatha"]
TINY_TEXT = {"width": 32, "heads": 2, "layers": 1, "context_length": 16}


def tiny(kind: str, **extra):
    torch.manual_seed(0)
    config = {
        "kind": kind,
        "backbone": "vit_tiny",
        "image_size": 32,
        "classes": CLASSES,
        "class_lineages": LINEAGES,
        "embed_dim": 32,
        "text": TINY_TEXT,
        **extra,
    }
    return build_model(config)


def images(n=4, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


# ------------------------------------------------------------------ backbone
def test_backbone_factory_any_size_and_any_timm_model():
    vit = create_backbone("vit_tiny", image_size=48)
    assert vit(torch.zeros(1, 3, 48, 48)).shape == (1, 192)
    assert vit.pos_embed.shape[1] == 1 + 3 * 3
    conv = create_backbone("resnet18", image_size=40)  # size-agnostic: no img_size passed
    assert conv(torch.zeros(1, 3, 40, 40)).shape == (1, 512)
    with pytest.raises(ValueError, match="unknown backbone"):
        create_backbone("no_such_model_xyz")


def test_backbone_initial_weights_from_a_local_file(tmp_path):
    from safetensors.torch import save_file

    source = create_backbone("vit_tiny", image_size=64)
    path = tmp_path / "w.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in source.state_dict().items()}, str(path))
    trunk = create_backbone("vit_tiny", image_size=32, pretrained=path)  # pos_embed resampled
    assert torch.equal(trunk.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    assert trunk.pos_embed.shape[1] == 1 + 2 * 2
    torch.save(source.state_dict(), tmp_path / "w.pt")
    assert set(read_state_dict(tmp_path / "w.pt")) == set(source.state_dict())


# ------------------------------------------------------------------ model directory
@pytest.mark.parametrize("kind", ["supervised", "clip"])
def test_saved_model_reloads_and_predicts_identically(tmp_path, kind):
    extra = {"head_ranks": ["phylum"]} if kind == "supervised" else {}
    model = tiny(kind, **extra).eval()
    x = images()
    save_model(model, tmp_path / "m", store_manifest_hash="abc")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["kind"] == kind and config["classes"] == CLASSES
    assert config["class_lineages"][0]["order"] == "Calanoida"
    assert config["store_manifest_hash"] == "abc" and config["preprocess"]["size"] == 32
    assert len(config["preprocess"]["mean"]) == len(config["preprocess"]["std"]) == 3
    reloaded = load_model(tmp_path / "m")
    assert type(reloaded) is type(model)
    assert torch.equal(reloaded.predict_logits(x), model.predict_logits(x))
    assert reloaded.predict(x).shape == (4,)
    if kind == "supervised":
        assert config["rank_classes"]["phylum"] == ["Arthropoda", "Chaetognatha"]
        out = model(model.normalize(x), torch.tensor([0, 1, 2, 0]))
        assert out["phylum"][1].tolist() == [0, 0, 1, 0]
    else:
        assert config["captions"][0] == "animalia arthropoda copepoda calanoida"


def test_clip_model_opens_in_open_clip(tmp_path):
    open_clip = pytest.importorskip("open_clip")
    model = tiny("clip", caption_style="bioclip").eval()
    save_model(model, tmp_path / "m")
    oc_model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path / 'm'}")
    oc_model.eval()
    x = model.normalize(images())
    with torch.no_grad():
        ours = model.encode_image(x)
        theirs = F.normalize(oc_model.encode_image(x), dim=-1)
        assert torch.allclose(ours, theirs, atol=1e-4)
        tokenizer = open_clip.get_tokenizer(f"local-dir:{tmp_path / 'm'}")
        text = tokenizer(model.captions)
        assert torch.allclose(
            F.normalize(oc_model.encode_text(text), dim=-1), model.encode_text(text), atol=1e-5
        )
    assert model.captions[2] == "a photo of Animalia Chaetognatha."


def test_clip_logits_are_scaled_cosines_to_class_captions():
    model = tiny("clip").eval()
    x = model.normalize(images(2))
    with torch.no_grad():
        logits = model(x)
        direct = model.text_logits(x, model.captions)
    assert logits.shape == (2, 3)
    assert torch.allclose(logits, direct, atol=1e-5)
    assert logits.abs().max() <= model.clip.logit_scale.exp() + 1e-4


# ------------------------------------------------------------------ losses
def test_every_loss_on_hand_made_logits():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    target = torch.tensor([0, 2])
    counts = [100, 10, 1]
    lse = torch.logsumexp(logits, 1)
    ce = (lse - logits[[0, 1], [0, 2]]).mean()
    assert torch.allclose(make_loss("ce")(logits, target), ce)
    eps = 0.1  # label smoothing: (1 - eps) * nll + eps * mean over classes of -log p
    logp = F.log_softmax(logits, 1)
    smooth = ((1 - eps) * -logp[[0, 1], [0, 2]] - eps * logp.mean(1)).mean()
    assert torch.allclose(make_loss("ce", label_smoothing=eps)(logits, target), smooth)
    p_t = logp[[0, 1], [0, 2]].exp()
    focal = (-((1 - p_t) ** 2) * p_t.log()).mean()
    assert torch.allclose(make_loss("focal", gamma=2.0)(logits, target), focal)
    assert torch.allclose(make_loss("focal", gamma=0.0)(logits, target), ce)
    prior = torch.tensor(counts, dtype=torch.float) / sum(counts)
    bal = F.cross_entropy(logits + prior.log(), target)
    assert torch.allclose(make_loss("balanced_softmax", counts)(logits, target), bal)
    assert torch.allclose(make_loss("logit_adjust", counts, tau=1.0)(logits, target), bal)
    half = F.cross_entropy(logits + 0.5 * prior.log(), target)
    assert torch.allclose(make_loss("logit_adjust", counts, tau=0.5)(logits, target), half)
    # LDAM: margin ∝ n^-1/4, largest (the rarest class) = max_margin, off the true logit only
    m = torch.tensor(counts, dtype=torch.float) ** -0.25
    m = m * 0.5 / m.max()
    assert math.isclose(m[2].item(), 0.5)
    shifted = logits.clone()
    shifted[0, 0] -= m[0]
    shifted[1, 2] -= m[2]
    ldam = F.cross_entropy(shifted, target)
    assert torch.allclose(make_loss("ldam", counts, max_margin=0.5)(logits, target), ldam)
    # rare classes are pushed harder by the prior-aware losses
    assert make_loss("balanced_softmax", counts)(logits, target) > ce
    for name in LOSSES:  # ignored targets drop out; an all-ignored batch gives a zero
        loss = make_loss(name, counts)
        both = loss(logits, torch.tensor([0, -100]))
        assert torch.allclose(both, loss(logits[:1], target[:1]))
        assert loss(logits, torch.tensor([-100, -100])).item() == 0.0
    with pytest.raises(ValueError, match="unknown loss"):
        make_loss("nope")
    with pytest.raises(ValueError, match="class counts"):
        make_loss("balanced_softmax")


def test_contrastive_loss_does_not_push_apart_same_caption_pairs():
    # images 0 and 1 share a caption; 2 has its own
    ids = torch.tensor([7, 7, 3])
    sims = torch.tensor([[5.0, 4.0, 0.0], [4.5, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
    loss = contrastive_loss_from_logits(sims, ids)
    loss.backward()
    # the same-caption off-diagonal similarities get no gradient: neither pushed nor pulled
    assert sims.grad[0, 1] == 0 and sims.grad[1, 0] == 0
    assert sims.grad[0, 2] > 0 and sims.grad[2, 0] > 0  # different captions: pushed apart
    # and changing them does not change the loss
    other = sims.detach().clone()
    other[0, 1], other[1, 0] = -3.0, 9.0
    assert torch.allclose(contrastive_loss_from_logits(other, ids), loss)
    # plain CLIP (all ids distinct) would push them apart
    plain = sims.detach().clone().requires_grad_(True)
    contrastive_loss_from_logits(plain, torch.tensor([0, 1, 2])).backward()
    assert plain.grad[0, 1] > 0
    # by hand: rows 0 and 1 see {5, 0} (their twin masked), row 2 sees {0, 0, 5}; columns alike
    a, b = math.log(math.exp(5) + 1) - 5, math.log(math.exp(5) + 2) - 5
    assert math.isclose(loss.item(), (2 * a + b) / 3, rel_tol=1e-5)


def test_contrastive_loss_on_features():
    torch.manual_seed(0)
    image = F.normalize(torch.randn(4, 8), dim=-1)
    text = F.normalize(torch.randn(4, 8), dim=-1)
    scale = torch.tensor(10.0)
    distinct = contrastive_loss(image, text, scale, torch.arange(4))
    logits = scale * image @ text.T
    expected = (
        F.cross_entropy(logits, torch.arange(4)) + F.cross_entropy(logits.T, torch.arange(4))
    ) / 2
    assert torch.allclose(distinct, expected)
    assert np.isfinite(contrastive_loss(image, text, scale, torch.zeros(4)).item())
