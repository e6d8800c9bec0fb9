"""Images in: folders and tar shards read the same way, robust decoding with counted skips, seeded per-sample
randomness and the resumable sharded sampler.

- :mod:`.image_files`: which files are images, the one deterministic folder listing;
- :mod:`.shards`: WebDataset-layout tar shards with random access (``drorae data shard``);
- :mod:`.folders`: decoding, datasets, transforms, seeds and the sampler every trainer uses.
"""

from .folders import (
    ImageFolderDataset,
    ResumableSampler,
    SkipCounter,
    collate_skipping,
    derive_seed,
    list_images,
    load_rgb,
    pil_to_tensor,
    sample_generator,
    to_rgb,
)
from .image_files import IMAGE_EXTENSIONS, list_image_files
from .shards import TarMember, index_shards, is_shard_spec, write_shards

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "ResumableSampler",
    "SkipCounter",
    "TarMember",
    "collate_skipping",
    "derive_seed",
    "index_shards",
    "is_shard_spec",
    "list_image_files",
    "list_images",
    "load_rgb",
    "pil_to_tensor",
    "sample_generator",
    "to_rgb",
    "write_shards",
]
