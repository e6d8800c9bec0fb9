"""What every drorae model must do, shared by the tokenizer's, the DiT's and the models to come.

A test class mixes :class:`ModelTesterMixin` in and says how to build a small model (random, non-zero weights),
its inputs, and its forward output; the mixin checks the config round trip, ``save_pretrained`` /
``from_pretrained`` equality (weights and outputs) and determinism.
"""

from __future__ import annotations

import json

import torch


class ModelTesterMixin:
    model_class: type

    def make_model(self, tmp_path):  # -> torch.nn.Module with a .config
        raise NotImplementedError

    def make_inputs(self) -> tuple:
        raise NotImplementedError

    def run(self, model, inputs) -> torch.Tensor:
        return model(*inputs)

    def test_config_round_trips_through_json(self, tmp_path):
        config = self.make_model(tmp_path).config
        data = json.loads(json.dumps(config.to_dict()))
        assert type(config).from_dict(data).to_dict() == config.to_dict()

    def test_save_and_load_give_the_same_weights_and_outputs(self, tmp_path):
        model = self.make_model(tmp_path).eval()
        model.save_pretrained(tmp_path / "saved")
        loaded = self.model_class.from_pretrained(tmp_path / "saved").eval()
        theirs = loaded.state_dict()
        assert set(theirs) == set(model.state_dict())
        assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
        inputs = self.make_inputs()
        with torch.no_grad():
            torch.testing.assert_close(self.run(loaded, inputs), self.run(model, inputs), rtol=0, atol=0)

    def test_forward_is_deterministic_and_depends_on_its_input(self, tmp_path):
        model = self.make_model(tmp_path).eval()
        inputs = self.make_inputs()
        with torch.no_grad():
            first, second = self.run(model, inputs), self.run(model, inputs)
            other = self.run(model, tuple(x + 0.5 if x.is_floating_point() else x for x in inputs))
        assert torch.equal(first, second)
        assert not torch.allclose(first, other)
