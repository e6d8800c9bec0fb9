"""Perceptual losses: LPIPS from a local VGG16 file, ST-LPIPS from its wheel, never a download."""

from __future__ import annotations

import importlib.util
import socket
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from drorae.tokenizer.losses import LPIPS_VGG16_FILENAME, build_perceptual_loss
from drorae.tokenizer.losses.perceptual import LPIPSLoss, STLPIPSLoss

CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any attempt to open a network connection (a hub download would)."""
    monkeypatch.setattr(socket.socket, "connect", _refuse_network)
    monkeypatch.setattr(socket.socket, "connect_ex", _refuse_network)
    monkeypatch.setattr(socket, "create_connection", _refuse_network)


@pytest.fixture(scope="module")
def vgg16_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A randomly initialised torchvision VGG16 state dict saved under torchvision's file name.

    Only the convolutional ``features.*`` tensors are saved at full size (that is what LPIPS
    reads); one small stray classifier tensor checks that the other keys are ignored.
    """
    from torchvision.models import vgg

    torch.manual_seed(0)
    # torchvision's own VGG16 feature stack (what `vgg16().features` is), without building the
    # 120M-parameter classifier.
    features = vgg.make_layers(vgg.cfgs["D"])
    state = {f"features.{k}": v.clone() for k, v in features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(10)
    path = tmp_path_factory.mktemp("vgg") / LPIPS_VGG16_FILENAME
    torch.save(state, path)
    return path, state


@pytest.fixture(scope="module")
def lpips_loss(vgg16_file: tuple[Path, dict[str, torch.Tensor]]) -> LPIPSLoss:
    path, _ = vgg16_file
    socket_connect = socket.socket.connect
    try:  # module-scoped, so patch by hand rather than with the monkeypatch fixture
        socket.socket.connect = _refuse_network  # type: ignore[method-assign]
        loss = build_perceptual_loss("lpips", weights_path=str(path))
    finally:
        socket.socket.connect = socket_connect  # type: ignore[method-assign]
    assert isinstance(loss, LPIPSLoss)
    return loss


def _refuse_network(*args: object, **kwargs: object) -> None:
    raise AssertionError("network access attempted")


def _images(seed: int, size: int = 32) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _assert_frozen_eval(loss: nn.Module) -> None:
    parent = nn.Sequential(loss)
    parent.train()
    assert not loss.training
    assert all(not m.training for m in loss.modules())
    assert all(not p.requires_grad for p in loss.parameters())


# ---------------------------------------------------------------------------------- LPIPS


def test_lpips_loads_local_vgg16_weights(
    lpips_loss: LPIPSLoss, vgg16_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    _, saved = vgg16_file
    trunk = dict(lpips_loss.net.net.named_modules())
    for index in CONV_INDICES:
        (name,) = [n for n in trunk if n.endswith(f".{index}") and n.startswith("slice")]
        assert torch.equal(trunk[name].weight, saved[f"features.{index}.weight"])
        assert torch.equal(trunk[name].bias, saved[f"features.{index}.bias"])


def test_lpips_heads_are_the_shipped_calibrated_ones(lpips_loss: LPIPSLoss) -> None:
    import lpips

    heads = torch.load(
        Path(lpips.__file__).parent / "weights" / "v0.1" / "vgg.pth",
        map_location="cpu",
        weights_only=True,
    )
    for i, lin in enumerate(lpips_loss.net.lins):
        assert torch.equal(lin.model[1].weight, heads[f"lin{i}.model.1.weight"])


def test_lpips_values_gradient_and_frozen(lpips_loss: LPIPSLoss) -> None:
    assert lpips_loss.name == "lpips-vgg"
    x, y = _images(1), _images(2)
    assert lpips_loss(x, x).abs().item() < 1e-6
    y.requires_grad_(True)
    value = lpips_loss(x, y)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    _assert_frozen_eval(lpips_loss)


def test_lpips_found_in_torch_home(
    vgg16_file: tuple[Path, dict[str, torch.Tensor]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    no_network: None,
) -> None:
    path, _ = vgg16_file
    checkpoints = tmp_path / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / LPIPS_VGG16_FILENAME).symlink_to(path)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    loss = build_perceptual_loss("lpips")
    assert isinstance(loss, LPIPSLoss)
    assert loss.weights_path == str(checkpoints / LPIPS_VGG16_FILENAME)


def test_lpips_missing_file_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(FileNotFoundError) as info:
        build_perceptual_loss("lpips")
    message = str(info.value)
    assert LPIPS_VGG16_FILENAME in message
    assert str(tmp_path / "torch_home" / "hub" / "checkpoints") in message
    assert "perceptual: stlpips" in message and "perceptual_weight: 0" in message

    missing = tmp_path / "elsewhere" / "my_vgg.pth"
    with pytest.raises(FileNotFoundError, match="my_vgg.pth") as info:
        build_perceptual_loss("lpips", weights_path=str(missing))
    assert LPIPS_VGG16_FILENAME in str(info.value)


def test_lpips_rejects_a_non_vgg_file(tmp_path: Path) -> None:
    path = tmp_path / "not_vgg.pth"
    torch.save({"features.0.weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a torchvision VGG16"):
        build_perceptual_loss("lpips", weights_path=path)


# ---------------------------------------------------------------------------------- ST-LPIPS


@pytest.fixture(scope="module")
def stlpips_loss() -> STLPIPSLoss:
    socket_connect = socket.socket.connect
    try:
        socket.socket.connect = _refuse_network  # type: ignore[method-assign]
        loss = build_perceptual_loss("stlpips")
    finally:
        socket.socket.connect = socket_connect  # type: ignore[method-assign]
    assert isinstance(loss, STLPIPSLoss)
    return loss


def test_stlpips_values_and_name(stlpips_loss: STLPIPSLoss) -> None:
    assert stlpips_loss.name == "stlpips-vgg"
    assert not stlpips_loss.name.startswith("lpips")
    x, y = _images(3), _images(4)
    assert stlpips_loss(x, x).abs().item() < 1e-6
    y.requires_grad_(True)
    value = stlpips_loss(x, y)
    assert value.ndim == 0 and value.item() > 0
    value.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    _assert_frozen_eval(stlpips_loss)


def test_stlpips_import_leaves_no_placeholder_modules(stlpips_loss: STLPIPSLoss) -> None:
    for name in ("IPython", "torchsummary"):
        assert name not in sys.modules or importlib.util.find_spec(name) is not None


def test_build_none_and_unknown() -> None:
    assert build_perceptual_loss("none") is None
    with pytest.raises(ValueError, match="unknown perceptual"):
        build_perceptual_loss("ssim")


def test_lpips_equals_the_lpips_package_on_the_same_images(
    lpips_loss: LPIPSLoss, vgg16_file: tuple[Path, dict[str, torch.Tensor]]
) -> None:
    """The `lpips` package's own LPIPS-VGG (its heads from its wheel, its VGG trunk given the same weights) on
    2x - 1: drorae takes [0, 1] images and must give the same distances and input gradients."""
    import lpips

    _, saved = vgg16_file
    ref = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    for name, module in ref.net.named_modules():
        if isinstance(module, nn.Conv2d):  # lpips' slices keep torchvision's feature indices as module names
            index = name.rsplit(".", 1)[1]
            module.weight.data.copy_(saved[f"features.{index}.weight"])
            module.bias.data.copy_(saved[f"features.{index}.bias"])
    x, y = _images(5), _images(6).requires_grad_(True)
    y_ref = y.detach().clone().requires_grad_(True)
    expected = ref(x * 2 - 1, y_ref * 2 - 1).mean()
    got = lpips_loss(x, y)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    got.backward()
    expected.backward()
    torch.testing.assert_close(y.grad, y_ref.grad, rtol=1e-4, atol=1e-8)


def test_stlpips_equals_the_stlpips_package_on_the_same_images(stlpips_loss: STLPIPSLoss) -> None:
    """stlpips-pytorch's own shift-tolerant LPIPS, loaded by the package itself (pretrained=True) and given 2x - 1."""
    from drorae.tokenizer.losses.perceptual import _import_stlpips

    stlpips = _import_stlpips()  # the package imports IPython for a debugging helper; only that is stubbed
    ref = stlpips.LPIPS(net="vgg", variant="shift_tolerant", pretrained=True, pnet_rand=True, verbose=False).eval()
    x, y = _images(7), _images(8)
    expected = ref(x * 2 - 1, y * 2 - 1).mean()
    torch.testing.assert_close(stlpips_loss(x, y), expected, rtol=1e-5, atol=1e-7)
