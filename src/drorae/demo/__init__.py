"""``drorae demo``: the whole pipeline offline on a laptop CPU, at toy scale.

- :mod:`~drorae.demo.photos`: real photos that ship inside scikit-image, split by photo into train and held-out;
- :mod:`~drorae.demo.backbone`: a tiny DINOv2-with-registers pretrained (and cached) on them, so that its deep
  blocks lose pixel detail the way semantic pretraining does;
- :mod:`~drorae.demo.pipeline`: layer probe, phases 1-3 and the controls through
  :class:`drorae.tokenizer.training.Trainer`,
  evaluation on held-out crops, ``report.md`` / ``report.json`` and figures.
"""

from .backbone import BackboneRecipe, cached_backbone, default_cache_dir
from .photos import (
    RandomCropDataset,
    fixed_eval_crops,
    load_photos,
    write_class_crops,
    write_eval_crops,
    write_sample_dataset,
)
from .pipeline import ROWS, DemoPlan, evaluate_models, run_demo

__all__ = [
    "BackboneRecipe",
    "cached_backbone",
    "default_cache_dir",
    "RandomCropDataset",
    "fixed_eval_crops",
    "load_photos",
    "write_class_crops",
    "write_eval_crops",
    "write_sample_dataset",
    "ROWS",
    "DemoPlan",
    "evaluate_models",
    "run_demo",
]
