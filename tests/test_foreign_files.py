"""Every command that reads an outside file turns a garbage, truncated or object-holding file into one line naming
the file, exit code 2: no traceback, and never torch's or numpy's advice to unpickle (``weights_only=False``,
``allow_pickle``), which would run code stored in the file."""

import io
import pickle
import zipfile

import numpy as np
import pytest
import torch

from drorae.cli import main
from drorae.generation import DiT, DiTConfig


class Payload:
    """A class a malicious or foreign pickle might reference."""


def _garbage(path):
    path.write_bytes(bytes(range(256)) * 4)


def _truncated(valid: bytes):
    def write(path):
        path.write_bytes(valid[: len(valid) // 2])

    return write


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _object_pickle(path):
    path.write_bytes(_torch_bytes({"weights": torch.zeros(2), "config": Payload()}))


def _plain_pickle(path):
    path.write_bytes(pickle.dumps({"a": Payload()}))


def _npz_bytes(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _object_npz(path):
    path.write_bytes(_npz_bytes(arr_0=np.array([{"a": 1}], dtype=object), mu=np.zeros(3)))


def _zip_of_other(path):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")


TORCH_FILES = {
    "garbage": _garbage,
    "truncated": _truncated(_torch_bytes({"w": torch.zeros(64, 64)})),
    "object pickle": _object_pickle,
    "plain pickle": _plain_pickle,
}
NPZ_FILES = {
    "garbage": _garbage,
    "truncated": _truncated(_npz_bytes(arr_0=np.zeros((4, 8, 8, 3), np.uint8))),
    "object npz": _object_npz,
    "zip of other files": _zip_of_other,
}
SAFETENSORS_FILES = {
    "garbage": _garbage,
    "truncated": _truncated(_torch_bytes({"w": torch.zeros(64, 64)})),
    "torch pickle": _object_pickle,
}
JSON_FILES = {
    "garbage": _garbage,
    "truncated": lambda p: p.write_text('{"_class_name": "DRoRAE", "backbone": {'),
    "a list": lambda p: p.write_text("[1, 2]"),
}


def _dit_dir(root):
    DiT(DiTConfig(preset="DiT-tiny", in_channels=8, input_size=4, num_classes=2)).save_pretrained(root / "dit")
    return root / "dit"


def _decoder(root):
    from drorae.interop.decoder_keys import export_decoder_state_dict
    from drorae.tokenizer.decoder import DecoderConfig, RAEDecoder

    cfg = DecoderConfig(latent_dim=64, hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, patch_size=4,
                        num_patches=64)  # fmt: skip
    torch.save(export_decoder_state_dict(RAEDecoder(cfg), layout="rae", prefix=""), root / "decoder_ok.pt")
    return root / "decoder_ok.pt"


def _good_samples(root):
    np.savez(root / "good.npz", arr_0=np.zeros((4, 8, 8, 3), np.uint8))
    return root / "good.npz"


CASES = (
    [("import-rae-dit", "ckpt.pt", v, lambda r, f: ["import-rae-dit", f, r / "out"]) for v in TORCH_FILES]
    + [
        (
            "import-rae",
            "decoder.pt",
            v,
            lambda r, f: ["import-rae", f, r / "out", "--backbone", r / "bb", "--input-size", "32"],
        )
        for v in TORCH_FILES
    ]  # fmt: skip
    + [
        (
            "import-rae --stats",
            "stat.pt",
            v,
            lambda r, f: [
                "import-rae",
                _decoder(r),
                r / "out",
                "--backbone",
                r / "bb",
                "--stats",
                f,
                "--input-size",
                "32",
            ],
        )
        for v in TORCH_FILES
    ]  # fmt: skip
    + [("eval-gen", "samples.npz", v, lambda r, f: ["eval-gen", f, "--ref", f]) for v in NPZ_FILES]
    + [("eval-gen --ref", "ref.npz", v, lambda r, f: ["eval-gen", _good_samples(r), "--ref", f]) for v in NPZ_FILES]
    + [
        (
            "eval-gen --isc-weights",
            "w.pth",
            v,
            lambda r, f: ["eval-gen", _good_samples(r), "--ref", _good_samples(r), "--isc-weights", f],
        )
        for v in TORCH_FILES
    ]  # fmt: skip
    + [
        (
            "eval --ref-npz",
            "ref.npz",
            v,
            lambda r, f: ["eval", "--model", r / "m", "--data", r, "--out", r / "e", "--ref-npz", f],
        )
        for v in NPZ_FILES
    ]
    + [("info", "config.json", v, lambda r, f: ["info", f.parent]) for v in JSON_FILES]
    + [
        (
            "sample --dit",
            "model.safetensors",
            v,
            lambda r, f: ["sample", "--dit", f.parent, "--tokenizer", r / "tok", "--num", "1", "--out", r / "s"],
        )
        for v in SAFETENSORS_FILES
    ]  # fmt: skip
)


def _writer(name: str, variant: str):
    table = {".pt": TORCH_FILES, ".pth": TORCH_FILES, ".npz": NPZ_FILES, ".json": JSON_FILES,
             ".safetensors": SAFETENSORS_FILES}  # fmt: skip
    return table["." + name.rsplit(".", 1)[1]][variant]


@pytest.mark.parametrize("command, name, variant, argv", CASES, ids=[f"{c[0]}-{c[2]}" for c in CASES])
def test_a_foreign_file_is_one_clear_line(command, name, variant, argv, tmp_path, capsys, dinov2_reg_dir):
    (tmp_path / "bb").symlink_to(dinov2_reg_dir)
    if name in ("config.json", "model.safetensors"):
        folder = tmp_path / "dir"
        if name == "model.safetensors":
            folder = _dit_dir(tmp_path)
        folder.mkdir(exist_ok=True)
        path = folder / name
    else:
        path = tmp_path / name
    _writer(name, variant)(path)
    code = main([str(a) for a in argv(tmp_path, path)])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and str(path) in err, err
    for hint in ("Traceback", "weights_only", "allow_pickle", "pickle.load", "add_safe_globals"):
        assert hint not in err, err
