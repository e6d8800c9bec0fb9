"""eval-gen: Inception Score and KID through torch-fidelity from a local weights file; references it cannot use."""

import json
from unittest import mock

import numpy as np
import pytest
import torch
import torch_fidelity  # a runtime dependency of eval-gen: missing, the module fails

from drorae.cli import main
from drorae.evaluation.generation import evaluate_generation


@pytest.fixture(scope="module")
def isc_weights(tmp_path_factory):
    """A randomly initialised torch-fidelity InceptionV3, saved in its weights format (a state dict). He-normal
    convolutions keep the activations from vanishing and scaled-up logits make the class probabilities, and so
    IS, vary from image to image."""
    from torch_fidelity import feature_extractor_inceptionv3 as fe

    torch.manual_seed(0)
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd, *a, **k: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048", "logits_unbiased"])
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    state = net.state_dict()
    state["fc.weight"] = state["fc.weight"] * 300
    path = tmp_path_factory.mktemp("isc") / "weights-inception-random.pth"
    torch.save(state, path)
    return path


def _images(seed, n=20):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (n, 1, 1, 3))  # flat colours: different images, different Inception outputs
    return (base + rng.integers(0, 40, (n, 32, 32, 3))).clip(0, 255).astype(np.uint8)


class Images(torch.utils.data.Dataset):
    def __init__(self, arr):
        self.arr = arr

    def __len__(self):
        return len(self.arr)

    def __getitem__(self, i):
        return torch.from_numpy(self.arr[i]).permute(2, 0, 1).contiguous()


def test_inception_score_and_kid_equal_torch_fidelitys(tokenizer_dir, isc_weights, tmp_path):
    samples, ref = _images(0), _images(1)
    np.savez(tmp_path / "s.npz", arr_0=samples)
    np.savez(tmp_path / "r.npz", arr_0=ref)
    code = main(
        ["eval-gen", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz"), "--features", "backbone",
         "--tokenizer", str(tokenizer_dir), "--isc-weights", str(isc_weights), "--device", "cpu"]
    )  # fmt: skip
    assert code == 0
    m = json.loads((tmp_path / "eval_gen.json").read_text())["metrics"]
    expected = torch_fidelity.calculate_metrics(
        input1=Images(samples), input2=Images(ref), isc=True, kid=True, kid_subset_size=20, cuda=False,
        feature_extractor_weights_path=str(isc_weights), samples_shuffle=False, cache=False, verbose=False,
    )  # fmt: skip
    assert m["inception_score"] == pytest.approx(expected["inception_score_mean"], rel=1e-6)
    assert m["inception_score_std"] == pytest.approx(expected["inception_score_std"], rel=1e-5, abs=1e-7)
    assert m["kid"] == pytest.approx(expected["kernel_inception_distance_mean"], rel=1e-5, abs=1e-8)
    assert m["inception_score"] > 1.05  # not the trivial IS of uniform predictions


def test_without_the_weights_is_and_kid_are_null_with_the_reason(tokenizer_dir, tmp_path):
    np.savez(tmp_path / "s.npz", arr_0=_images(0))
    report = evaluate_generation(tmp_path / "s.npz", tmp_path / "s.npz", features="backbone", tokenizer=tokenizer_dir)
    m = report["metrics"]
    assert m["inception_score"] is None and m["kid"] is None and m["sfid"] is None
    assert "--isc-weights" in report["notes"]["inception_score"] and "mixed_6/conv" in report["notes"]["sfid"]


def test_backbone_features_against_a_mu_sigma_only_reference_is_a_clear_error(tokenizer_dir, tmp_path, capsys):
    """Such a reference (ADM's statistics) lives in Inception's feature space; it was reaching
    FeatureStats.update(None)."""
    np.savez(tmp_path / "s.npz", arr_0=_images(0))
    np.savez(tmp_path / "stats.npz", mu=np.zeros(2048), sigma=np.eye(2048)[:4, :4])
    code = main(
        ["eval-gen", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "stats.npz"), "--features", "backbone",
         "--tokenizer", str(tokenizer_dir), "--device", "cpu"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "needs reference images" in err and "stats.npz holds only mu/sigma" in err


def test_isc_weights_that_are_not_torch_fidelitys_are_refused_before_any_work(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", arr_0=_images(0))
    torch.save({"fc.weight": torch.zeros(10, 2048)}, tmp_path / "w.pth")
    code = main(["eval-gen", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"), "--isc-weights",
                 str(tmp_path / "w.pth")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "w.pth is not torch-fidelity's Inception weights" in err
