"""The open_clip export of a CLIP-style model: plain `create_model_and_transforms("local-dir:…")`
(no extra arguments) gives open_clip's own transform equal to our image contract, tensor for
tensor, and the same embeddings and top-1 answers as our `Classifier`, on real non-square
plankton vignettes."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from planktonzilla.inference import Classifier
from planktonzilla.models import build_model, save_model

open_clip = pytest.importorskip("open_clip")

CLASSES = ["Calanoida", "Chaetognatha", "Appendicularia", "Hydrozoa", "Diatoms"]
LINEAGES = [
    {"kingdom": "Animalia", "phylum": "Arthropoda", "class": "Copepoda", "order": "Calanoida"},
    {"kingdom": "Animalia", "phylum": "Chaetognatha"},
    {"kingdom": "Animalia", "phylum": "Chordata", "class": "Appendicularia"},
    {"kingdom": "Animalia", "phylum": "Cnidaria", "class": "Hydrozoa"},
    {"kingdom": "Chromista", "phylum": "Ochrophyta", "class": "Bacillariophyceae"},
]
TEXT = {"width": 32, "heads": 2, "layers": 1, "context_length": 16}


@pytest.fixture(scope="module")
def vignettes(shared_data):
    """80 real ISIIS vignettes, the most elongated of 200 (non-square is the hard case)."""
    files = sorted((shared_data / "isiis_ndsb").glob("*/*.jpg"))[::150]
    sizes = [Image.open(f).size for f in files]
    order = np.argsort([-max(w / h, h / w) for w, h in sizes], kind="stable")
    chosen = [files[i] for i in order[:80]]
    assert max(sizes[order[0]]) / min(sizes[order[0]]) > 2  # really non-square
    return chosen


@pytest.fixture(scope="module", params=[("token", 230), ("avg", 0)], ids=["token-pool", "avg-pool"])
def exported(request, tmp_path_factory):
    pool, fill = request.param
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "clip",
            "backbone": "vit_tiny",
            "preprocess": {"size": 48, "fill": fill},
            "classes": CLASSES,
            "class_lineages": [
                {**lin, "name": c} for c, lin in zip(CLASSES, LINEAGES, strict=True)
            ],
            "embed_dim": 32,
            "text": TEXT,
            "timm_pool": pool,
        }
    ).eval()
    directory = tmp_path_factory.mktemp(f"clip-{pool}")
    save_model(model, directory)
    return model, directory


def test_plain_open_clip_loads_it_with_our_transform(exported, vignettes):
    model, directory = exported
    oc, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    oc.eval()
    ours, theirs = [], []
    for path in vignettes:
        data = path.read_bytes()
        ours.append(torch.from_numpy(model.preprocess(data)).permute(2, 0, 1))
        theirs.append(transform(Image.open(io.BytesIO(data))))
    ours, theirs = model.normalize(torch.stack(ours)), torch.stack(theirs)
    # the same uint8 pixels normalised two ways: x/255 then (x - m)/s vs x*(1/255s) - m/s
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    with torch.no_grad():
        a = model.encode_image(ours)
        b = F.normalize(oc.encode_image(theirs), dim=-1)
    # another attention kernel (nn.MultiheadAttention vs timm's), float32 sums in another
    # order: unit vectors agree far below any decision
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_open_clip_and_classifier_give_the_same_top1(exported, vignettes):
    model, directory = exported
    oc, _, transform = open_clip.create_model_and_transforms(f"local-dir:{directory}")
    tokenizer = open_clip.get_tokenizer(f"local-dir:{directory}")
    oc.eval()
    clf = Classifier.load(directory, device="cpu")
    predictions = clf.predict([str(p) for p in vignettes])
    with torch.no_grad():
        text = F.normalize(oc.encode_text(tokenizer(model.captions)), dim=-1)
        x = torch.cat([transform(Image.open(p)).unsqueeze(0) for p in vignettes])
        image = F.normalize(oc.encode_image(x), dim=-1)
        logits = (oc.logit_scale.exp() * image @ text.T).numpy()
    agree = 0
    for p, row in zip(predictions, logits, strict=True):
        assert p.error is None
        theirs = CLASSES[int(row.argmax())]
        if p.label == theirs:
            agree += 1
        else:  # only an exact tie within float noise may differ (logits agree to ~1e-5)
            assert abs(row[CLASSES.index(p.label)] - row.max()) < 1e-4, (p.label, theirs)
    assert agree >= len(vignettes) - 2
