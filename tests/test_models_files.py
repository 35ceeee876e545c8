"""Tests for backdoor_eval.models.files: a trained model's file, written and read back."""

from __future__ import annotations

import re

import pytest
import torch

from backdoor_eval.models import create_model, load_model, save_model


def test_a_saved_model_loads_back_with_the_same_weights(tmp_path):
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=3, width=8)
    save_model(tmp_path / "model.pt", "small_cnn", {"width": 8}, 3, model.state_dict())
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert list(saved) == ["model", "model_params", "num_classes", "state_dict"]
    assert (saved["model"], saved["model_params"], saved["num_classes"]) == ("small_cnn", {"width": 8}, 3)
    loaded = load_model(tmp_path / "model.pt", "small_cnn", 3, {"width": 8})
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)
    assert not list(tmp_path.glob(".model.pt*"))  # written atomically: no temporary file left


def test_a_file_that_is_not_this_models_is_named_with_its_option(tmp_path):
    model = create_model("small_cnn", num_classes=3, width=8)
    save_model(tmp_path / "model.pt", "small_cnn", {"width": 8}, 3, model.state_dict())
    (tmp_path / "text.pt").write_text("not a model")
    torch.save({"weights": {}}, tmp_path / "other.pt")
    cases = [
        (tmp_path / "text.pt", "small_cnn", 3, r"--model-file \S+text\.pt is not a model file this workflow wrote"),
        (tmp_path / "other.pt", "small_cnn", 3, r"holds a mapping without a state_dict, not a model file"),
        (tmp_path / "model.pt", "resnet18", 3, r"holds a 'small_cnn' model, not 'resnet18'"),
        (tmp_path / "model.pt", "small_cnn", 5, r"holds weights that do not fit model 'small_cnn' \("),
    ]
    for path, name, num_classes, message in cases:
        with pytest.raises(ValueError) as error:
            load_model(path, name, num_classes, {"width": 8}, "--model-file")
        assert str(error.value).startswith(f"--model-file {path} ") and re.search(message, str(error.value))
