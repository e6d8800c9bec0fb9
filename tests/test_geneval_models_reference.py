"""GenEval's two model steps against GenEval's and mmdetection's own code, on controlled model outputs.

The fixture (``tests/fixtures/geneval_models``, made by its ``make_fixture.py``; commits and versions in its
``meta.json``) holds:

* Mask2Former head outputs (class logits, quarter-resolution mask logits) and what mmdetection 2.28.2's test path
  (``instance_postprocess``, ``mask2bbox``, ``bbox2result``) makes of them: per class boxes, scores and masks;
* three colour-classification calls run through GenEval's ``ImageCrops`` / ``color_classification`` (clip_benchmark's
  zero-shot classifier, open_clip's ViT-L-14 preprocessing) with a stand-in CLIP (``standin.py``), and their
  classifiers, logits and colours.
"""

import importlib.util
import json
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from drorae.evaluation.geneval_models import ClipColors, Mask2FormerDetector

FIXTURE = Path(__file__).parent / "fixtures" / "geneval_models"
OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # openai/clip-vit-large-patch14's preprocessor_config.json
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]


@pytest.fixture(scope="module")
def ref():
    return load_file(str(FIXTURE / "outputs.safetensors")), json.loads((FIXTURE / "meta.json").read_text())


def _standin():
    spec = importlib.util.spec_from_file_location("geneval_standin", FIXTURE / "standin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _by_score(labels, boxes, masks):
    """Highest score first (GenEval's order), ties (the empty mask's zeros) by class."""
    labels, boxes = np.asarray(labels), np.asarray(boxes)
    order = np.lexsort((labels, -boxes[:, 4].round(6)))
    return labels[order], boxes[order], np.asarray(masks)[order]


def test_mask2former_detect_equals_mmdetections_postprocessing(ref):
    from transformers import BatchFeature

    t, meta = ref
    cfg = meta["detector"]
    h, w = cfg["image_hw"]
    cls, masks = t["detector.class_logits"], t["detector.mask_logits"]
    det = Mask2FormerDetector.__new__(Mask2FormerDetector)  # no network: the head's outputs are the fixture's
    det.processor = lambda images, return_tensors: BatchFeature({"pixel_values": torch.zeros(len(images), 3, h, w)})
    det.model = lambda pixel_values: types.SimpleNamespace(class_queries_logits=cls, masks_queries_logits=masks)
    det.device, det.max_per_image, det.class_names = torch.device("cpu"), cfg["max_per_image"], cfg["names"]
    results = det.detect([Image.new("RGB", (w, h)) for _ in range(cfg["batch"])])
    assert len(results) == cfg["batch"]
    for i, per_class in enumerate(results):
        labels = [cfg["names"].index(name) for name, (b, _) in per_class.items() for _ in range(len(b))]
        boxes = np.concatenate([b for b, _ in per_class.values()])
        got_masks = np.stack([m for _, ms in per_class.values() for m in ms])
        got = _by_score(labels, boxes, got_masks)
        want = _by_score(t[f"detector.{i}.labels"].numpy(), t[f"detector.{i}.boxes"].numpy(), t[f"detector.{i}.masks"])
        assert len(got[0]) == len(want[0]) == cfg["max_per_image"]
        np.testing.assert_array_equal(got[0], want[0])  # classes, in score order
        np.testing.assert_array_equal(got[1][:, :4], want[1][:, :4])  # mask2bbox boxes (x_max + 1)
        np.testing.assert_allclose(got[1][:, 4], want[1][:, 4], rtol=1e-5, atol=1e-7)  # prob x mean mask prob
        np.testing.assert_array_equal(got[2], want[2].astype(bool))
    assert (t["detector.0.boxes"][:, 4] == 0).any()  # the empty mask: box 0, score 0 (in both)


class _Processor:
    """A CLIPProcessor with openai/clip-vit-large-patch14's image processor and the stand-in's byte tokens."""

    def __init__(self, standin):
        from transformers import CLIPImageProcessor

        self.standin = standin
        self.image_processor = CLIPImageProcessor(
            size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, resample=3,
            image_mean=OPENAI_MEAN, image_std=OPENAI_STD,
        )  # fmt: skip

    def __call__(self, text=None, images=None, return_tensors="pt", padding=False, **image_kwargs):
        from transformers import BatchEncoding

        if text is not None:
            ids = self.standin.byte_tokens(text)
            return BatchEncoding({"input_ids": ids, "attention_mask": (ids > 0).long()})
        return self.image_processor(images=images, return_tensors=return_tensors, **image_kwargs)


def _centre_crops_differ(size: tuple[int, int]) -> bool:
    """Whether torchvision's CenterCrop (open_clip, GenEval) and transformers' CLIPImageProcessor take the 224 x 224
    centre of the shortest-edge-224 resize at different offsets: torchvision rounds (long - 224) / 2 (half to even),
    transformers floors it, so they differ by one pixel when that half is k + 0.5 with k odd."""
    short, long = min(size), max(size)
    excess = int(224 * long / short) - 224
    return int(round(excess / 2.0)) != excess // 2


def _run_clip_colors(t, meta):
    """drorae's ClipColors with the stand-in CLIP; per call: (crop sizes, colours, classifier, logits)."""
    standin = _standin()
    model = standin.StandInClip(standin.make_weights())
    seen = []
    encode = model.get_image_features
    model.get_image_features = lambda **kw: seen.append(encode(**kw)) or seen[-1]
    colors = ClipColors.__new__(ClipColors)  # the stand-in CLIP in place of ViT-L/14
    colors.processor, colors.model, colors.device, colors.classifiers = _Processor(standin), model, "cpu", {}
    out = []
    for i, call in enumerate(meta["color_calls"]):
        image = Image.fromarray(t[f"colors.{i}.image"].numpy())
        objects = [
            (box, mask.bool().numpy() if has else None)
            for box, mask, has in zip(t[f"colors.{i}.boxes"].numpy(), t[f"colors.{i}.masks"], call["has_mask"])
        ]
        names = colors.classify(image, objects, call["name"])
        clf = colors.classifier(call["name"])
        logits = 100.0 * F.normalize(seen[-1], dim=-1) @ clf
        sizes = [image.crop(tuple(float(v) for v in box[:4])).size for box, _ in objects]
        out.append((sizes, names, clf, logits))
    return out


def test_clip_colors_equals_genevals_color_classification(ref):
    t, meta = ref
    n_same = 0
    for i, (call, (sizes, names, clf, logits)) in enumerate(zip(meta["color_calls"], _run_clip_colors(t, meta))):
        # the classifier: GenEval's three templates, normalise, mean, renormalise (zero_shot_classifier)
        torch.testing.assert_close(clf, t[f"colors.{i}.classifier"], rtol=1e-5, atol=1e-6)
        assert names == call["colors"]
        # the crops (grey #999 outside the mask, the box's crop, CLIP's preprocessing) seen through the logits
        for j in range(len(sizes)):
            torch.testing.assert_close(logits[j], t[f"colors.{i}.logits"][j], rtol=0, atol=0.01)
            n_same += 1
    assert n_same >= 9


def test_clip_colors_preprocessing_equals_open_clips_for_every_crop(ref):
    """Every crop, those where transformers' processor would centre-crop one pixel off open_clip's included:
    ClipColors resizes and centre-crops with torchvision, as GenEval's open_clip transform does."""
    t, meta = ref
    assert any(_centre_crops_differ(s) for sizes, *_ in _run_clip_colors(t, meta) for s in sizes)
    for i, (_, _, _, logits) in enumerate(_run_clip_colors(t, meta)):
        torch.testing.assert_close(logits, t[f"colors.{i}.logits"], rtol=0, atol=0.01)
