"""``eval-gen``'s precision / recall / density / coverage against prdc itself and against the definitions by hand,
on two sets drawn from different distributions (so that swapping real and fake gives other numbers)."""

import contextlib
import io

import numpy as np
import pytest
import torch

from drorae.evaluation.generation import precision_recall

K = 3


def two_sets():
    """Real: a wide Gaussian, 70 points. Fake: a narrow shifted one, 45 points (a precise, low-recall generator)."""
    g = torch.Generator().manual_seed(0)
    real = torch.randn(70, 8, generator=g)
    fake = 0.4 * torch.randn(45, 8, generator=g) + 0.6
    return real, fake


def by_hand(real, fake, k):
    """Kynkaanniemi et al. 2019 (precision, recall) and Naeem et al. 2020 (density, coverage), with k-NN balls whose
    radius is the distance to the k-th nearest other point of the same set."""
    real, fake = real.double(), fake.double()

    def radii(x):
        return torch.cdist(x, x).sort(dim=1).values[:, k]  # column 0 is the point itself

    r_real, r_fake = radii(real), radii(fake)
    d = torch.cdist(real, fake)  # [real, fake]
    inside_real = d < r_real[:, None]  # fake j inside real i's ball
    return {
        "precision": inside_real.any(dim=0).double().mean().item(),
        "recall": (d < r_fake[None, :]).any(dim=1).double().mean().item(),
        "density": inside_real.sum(dim=0).double().mean().item() / k,
        "coverage": (d.min(dim=1).values < r_real).double().mean().item(),
    }


def test_precision_recall_is_prdc_with_real_and_fake_in_their_places():
    from prdc import compute_prdc

    real, fake = two_sets()
    ours = precision_recall(real, fake, nearest_k=K)
    with contextlib.redirect_stdout(io.StringIO()):
        reference = compute_prdc(real.numpy().astype(np.float64), fake.numpy().astype(np.float64), K)
    hand = by_hand(real, fake, K)
    assert ours["num_real"] == 70 and ours["num_fake"] == 45
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(float(reference[name]), abs=1e-12), name
        assert ours[name] == pytest.approx(hand[name], abs=1e-12), name
    # the sets are asymmetric: a narrow generator inside the real support is precise but misses most of it
    assert ours["precision"] > 0.9 and ours["recall"] < 0.6
    swapped = by_hand(fake, real, K)
    assert abs(swapped["precision"] - ours["precision"]) > 0.3 and abs(swapped["recall"] - ours["recall"]) > 0.3


def test_precision_recall_subsets_each_side_and_refuses_too_few_points():
    real, fake = two_sets()
    ours = precision_recall(real, fake, nearest_k=K, max_num=40, seed=5)
    assert ours["num_real"] == 40 and ours["num_fake"] == 40
    # the subset is seeded: the same call gives the same rows, and every value is one of a 40-point set's fractions
    assert precision_recall(real, fake, nearest_k=K, max_num=40, seed=5) == ours
    assert all(abs(ours[name] * 40 - round(ours[name] * 40)) < 1e-9 for name in ("precision", "recall", "coverage"))
    with pytest.raises(ValueError, match="needs more than 3 images per side"):
        precision_recall(real[:3], fake, nearest_k=K)
