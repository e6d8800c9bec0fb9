"""Tests for drorae.demo.backbone: recipe hashing, quick pretraining, caching, loading."""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from drorae import load_backbone
from drorae.demo import backbone as db
from drorae.demo import photos as sample_data
from drorae.demo.backbone import BackboneRecipe, augment_batch, cached_backbone, default_cache_dir


def test_recipe_json_roundtrip_and_key() -> None:
    recipe = BackboneRecipe()
    assert BackboneRecipe.from_json(recipe.to_json()) == recipe
    assert json.loads(recipe.to_json())["scale"] == [0.35, 2.5]
    assert recipe.key() == BackboneRecipe().key()
    assert len(recipe.key()) == 12
    changed = {
        recipe.replace(lr=1e-3).key(),
        recipe.replace(steps=recipe.steps + 1).key(),
        recipe.replace(seed=1).key(),
        recipe.replace(blur_p=0.4).key(),
        recipe.replace(scale=(0.5, 2.0)).key(),
        recipe.replace(pool="mean").key(),
    }
    assert recipe.key() not in changed and len(changed) == 6
    with pytest.raises(ValueError):
        BackboneRecipe.from_dict({**recipe.to_dict(), "bogus": 1})
    with pytest.raises(ValueError):
        BackboneRecipe(image_size=60)  # not a multiple of the patch
    with pytest.raises(ValueError):
        BackboneRecipe(pool="max")


def test_augment_batch_is_seeded_and_in_range() -> None:
    recipe = BackboneRecipe.quick()
    images = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    a = augment_batch(images, recipe, torch.Generator().manual_seed(3))
    b = augment_batch(images, recipe, torch.Generator().manual_seed(3))
    c = augment_batch(images, recipe, torch.Generator().manual_seed(4))
    assert a.shape == images.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 1


def test_default_cache_dir_env(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("DRORAE_CACHE", str(tmp_path / "a"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("DRORAE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "drorae"


def test_quick_pretraining_caches_loads_and_never_sees_heldout(monkeypatch, tmp_path) -> None:
    loaded: list[str] = []
    real_load_photo = sample_data.load_photo

    def recording_load_photo(name: str):
        loaded.append(name)
        return real_load_photo(name)

    monkeypatch.setattr(sample_data, "load_photo", recording_load_photo)
    recipe = BackboneRecipe.quick(steps=12)

    calls: list[int] = []
    real_pretrain = db.pretrain_backbone

    def counting_pretrain(*args, **kwargs):
        calls.append(1)
        return real_pretrain(*args, **kwargs)

    monkeypatch.setattr(db, "pretrain_backbone", counting_pretrain)

    path = cached_backbone(recipe, cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "backbones" / recipe.key()
    assert calls == [1]
    # Only training photos, and all of them, were read.
    assert loaded and set(loaded) == set(sample_data.TRAIN_PHOTOS)
    assert not set(loaded) & set(sample_data.HELDOUT_PHOTOS)
    stats = json.loads((path / db.STATS_FILE).read_text())
    assert stats["steps"] == 12 and 0.0 <= stats["final_train_accuracy"] <= 1.0
    assert not set(stats["photos"]) & set(sample_data.HELDOUT_PHOTOS)
    assert BackboneRecipe.from_json((path / db.RECIPE_FILE).read_text()) == recipe
    # No temporary directory is left behind.
    assert sorted(p.name for p in (tmp_path / "backbones").iterdir()) == [recipe.key()]

    # A second call is a cache hit: no retraining, same files.
    mtime = os.path.getmtime(path / "config.json")
    start = time.perf_counter()
    assert cached_backbone(recipe, cache_dir=tmp_path, progress=False) == path
    assert time.perf_counter() - start < 1.0
    assert calls == [1]
    assert os.path.getmtime(path / "config.json") == mtime

    # The entry loads through the public loader and runs at the crop size.
    backbone = load_backbone(str(path), input_size=recipe.image_size)
    assert backbone.num_layers == recipe.num_layers and backbone.hidden_size == recipe.hidden_size
    out = backbone(torch.rand(2, 3, recipe.image_size, recipe.image_size))
    grid = recipe.image_size // recipe.patch_size
    assert out.hidden_states.shape == (recipe.num_layers, 2, grid * grid, recipe.hidden_size)
    assert torch.isfinite(out.z_base).all()

    # Pretraining changed the weights relative to the seeded initialisation.
    init_dir = db.init_backbone(recipe, tmp_path / "init")
    init = load_backbone(str(init_dir), input_size=recipe.image_size)
    assert not torch.equal(
        init.model.embeddings.patch_embeddings.projection.weight,
        backbone.model.embeddings.patch_embeddings.projection.weight,
    )


def test_pretraining_is_deterministic_and_leaves_global_rng_alone(tmp_path) -> None:
    recipe = BackboneRecipe.quick(steps=4, batch_size=8, hidden_size=32, num_layers=1)
    torch.manual_seed(123)
    a = db.pretrain_backbone(recipe, tmp_path / "a", progress=False)
    after = torch.rand(1)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(1), after)  # training drew nothing from the global RNG
    b = db.pretrain_backbone(recipe, tmp_path / "b", progress=False)
    assert a["final_loss"] == b["final_loss"]
    wa = load_backbone(str(tmp_path / "a"), input_size=32).state_dict()
    wb = load_backbone(str(tmp_path / "b"), input_size=32).state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_interrupted_training_leaves_no_cache_entry(monkeypatch, tmp_path) -> None:
    recipe = BackboneRecipe.quick(steps=2)

    def failing_pretrain(recipe, out_dir, progress=True):
        (out_dir / "config.json").write_text("{}")  # a half-written entry
        raise KeyboardInterrupt

    monkeypatch.setattr(db, "pretrain_backbone", failing_pretrain)
    with pytest.raises(KeyboardInterrupt):
        cached_backbone(recipe, cache_dir=tmp_path, progress=False)
    assert list((tmp_path / "backbones").iterdir()) == []


def test_the_shipped_backbone_is_the_default_recipes_and_fills_an_empty_cache(tmp_path) -> None:
    """A first `make demo` copies the shipped pretrained backbone instead of pretraining (no training here), and
    that copy is the recipe's: same recipe file, the pretraining record, and weights that load and run."""
    import torch

    from drorae.demo.backbone import SHIPPED_BACKBONE, BackboneRecipe, cached_backbone
    from drorae.tokenizer.backbones import load_backbone

    recipe = BackboneRecipe()
    assert BackboneRecipe.from_json((SHIPPED_BACKBONE / "recipe.json").read_text()) == recipe
    stats = json.loads((SHIPPED_BACKBONE / "pretrain_stats.json").read_text())
    assert stats["recipe_key"] == recipe.key() and stats["steps"] == recipe.steps
    entry = cached_backbone(recipe, cache_dir=tmp_path, progress=False)
    assert entry == tmp_path / "backbones" / recipe.key()
    assert (entry / "model.safetensors").read_bytes() == (SHIPPED_BACKBONE / "model.safetensors").read_bytes()
    backbone = load_backbone(str(entry), input_size=recipe.image_size)
    assert backbone.num_layers == recipe.num_layers and backbone.hidden_size == recipe.hidden_size
    out = backbone(torch.rand(1, 3, recipe.image_size, recipe.image_size))
    assert torch.isfinite(out.hidden_states).all()
