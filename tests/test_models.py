"""Tests for backdoor_eval.models as a whole: the registry and factory, the Classifier contract, the package's imports.

NASNet-A Mobile: test_models_nasnet_mobile.py; pretrained weights: test_models_weights.py.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from backdoor_eval import models
from backdoor_eval.models import MODELS, Classifier, create_model
from model_fixtures import NUM_FEATURES, SMALL, one_thread  # noqa: F401  (one_thread: autouse fixture)

# ---------------------------------------------------------------------------------- registry


def test_registry_holds_the_paper_models_and_the_small_ones():
    assert {"resnet50", "nasnet_large", "nasnet_mobile", "small_cnn", "resnet18"} <= set(MODELS.names())


def test_unknown_model_name_is_a_value_error_listing_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown model 'vgg_nonexistent'.*nasnet_mobile.*small_cnn.*timm:"):
        create_model("vgg_nonexistent", num_classes=10)


def test_unknown_timm_name_is_a_value_error():
    with pytest.raises(ValueError, match=r"'no_such_net' is not a timm model name"):
        create_model("timm:no_such_net", num_classes=10)


@pytest.mark.parametrize("num_classes", [0, -3, 2.5, True])
def test_bad_num_classes_is_a_value_error(num_classes):
    with pytest.raises(ValueError, match=r"num_classes=.* allowed: an int >= 1"):
        create_model("small_cnn", num_classes=num_classes)


def test_weights_without_pretrained_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match=r"weights=.*pretrained=False"):
        create_model("small_cnn", num_classes=3, weights=tmp_path / "w.pth")


def test_bad_builder_parameters_are_value_errors():
    with pytest.raises(ValueError, match=r"width=0"):
        create_model("small_cnn", num_classes=3, width=0)
    with pytest.raises(ValueError, match=r"num_features=1000 .* multiple of 96"):
        create_model("nasnet_mobile", num_classes=3, num_features=1000)
    with pytest.raises(ValueError, match=r"cells_per_stage=0"):
        create_model("nasnet_mobile", num_classes=3, cells_per_stage=0)
    with pytest.raises(ValueError, match=r"min_input_size="):
        create_model("small_cnn", num_classes=3, min_input_size=(3, 0, 5))


# ---------------------------------------------------------------------- the Classifier contract


@pytest.mark.parametrize("name", list(SMALL))
def test_every_model_gives_hidden_and_logits_at_32_and_224_px(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, **SMALL[name]).eval()
    assert isinstance(model, Classifier)
    assert model.num_features == NUM_FEATURES[name]
    assert model.num_classes == 7
    assert model.model_name == name and model.model_params == SMALL[name]
    assert set(model.default_cfg) >= {"mean", "std", "input_size", "min_input_size"}
    # the paper's models run natively at 32 px (no upsampling by default)
    assert model.default_cfg["min_input_size"] is None
    for size in (32, 224):
        images = torch.randn(2, 3, size, size)
        with torch.no_grad():
            hidden, logits = model.forward_hidden(images)
            assert hidden.shape == (2, model.num_features)
            assert logits.shape == (2, 7)
            assert torch.equal(model.head(hidden), logits)
            assert torch.equal(model(images), logits)
            assert torch.isfinite(logits).all()
            if size == 32 and name in ("resnet50", "nasnet_large", "nasnet_mobile"):
                # what 32 px does to the paper's models: they run, their last stage sees 1x1 maps
                assert model.backbone.forward_features(images).shape[-2:] == (1, 1)
    # head is the backbone's own last layer, not a copy: g(h) trains with the rest
    assert model.head is model.backbone.get_classifier()
    assert not any(key.startswith("head.") for key in model.state_dict())


def test_default_cfg_comes_from_timm_pretrained_cfg():
    resnet = create_model("resnet50", num_classes=2)
    # the PyTorch model zoo weights the paper names, not timm's default tag
    assert resnet.backbone.pretrained_cfg["tag"] == "tv_in1k"
    assert resnet.default_cfg["mean"] == (0.485, 0.456, 0.406)
    assert resnet.default_cfg["std"] == (0.229, 0.224, 0.225)
    assert resnet.default_cfg["input_size"] == (3, 224, 224)
    large = create_model("nasnet_large", num_classes=2, **SMALL["nasnet_large"])
    assert large.default_cfg["input_size"] == (3, 331, 331)
    assert large.default_cfg["mean"] == (0.5, 0.5, 0.5)
    mobile = create_model("nasnet_mobile", num_classes=2, **SMALL["nasnet_mobile"])
    assert mobile.default_cfg["input_size"] == (3, 224, 224)
    assert mobile.default_cfg["std"] == (0.5, 0.5, 0.5)
    assert create_model("small_cnn", num_classes=2).default_cfg["input_size"] == (3, 32, 32)


def test_min_input_size_upsamples_inside_forward():
    model = create_model("small_cnn", num_classes=3, width=2, min_input_size=64).eval()
    assert model.default_cfg["min_input_size"] == (3, 64, 64)
    assert model.model_params["min_input_size"] == 64
    seen = []
    original = model.backbone.forward_features
    model.backbone.forward_features = lambda x: (seen.append(tuple(x.shape)), original(x))[1]
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        model(torch.randn(2, 3, 100, 20))
        model(torch.randn(2, 3, 80, 96))
    assert seen == [(2, 3, 64, 64), (2, 3, 100, 64), (2, 3, 80, 96)]
    # a constant image stays constant: bilinear upsampling, no padding
    flat = torch.full((1, 3, 32, 32), 0.25)
    assert torch.allclose(model.fit_input(flat), torch.full((1, 3, 64, 64), 0.25))
    # None disables the default
    plain = create_model("small_cnn", num_classes=3, width=2, min_input_size=None)
    assert plain.fit_input(flat) is flat


def test_small_cnn_fits_a_small_batch():
    """From scratch: 16 images with random labels are memorised in 40 Adam steps."""
    torch.manual_seed(0)
    model = create_model("small_cnn", num_classes=4, width=4)
    images, labels = torch.randn(16, 3, 16, 16), torch.randint(0, 4, (16,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(images), labels).backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        assert (model(images).argmax(1) == labels).all()


def test_small_cnn_head_is_timm_create_classifier_built_from_torch():
    """The head built without timm has timm's modules, initialisation and outputs: quickstart results are unchanged."""
    from timm.layers import create_classifier

    from backdoor_eval.models import small_cnn

    for pool_type, drop_rate in (("avg", 0.0), ("max", 0.25)):
        torch.manual_seed(0)
        ours = nn.Sequential(*small_cnn._classifier(32, 5, pool_type, drop_rate))
        torch.manual_seed(0)
        theirs = nn.Sequential(*create_classifier(32, 5, pool_type=pool_type, drop_rate=drop_rate))
        assert ours.state_dict().keys() == theirs.state_dict().keys()
        assert all(torch.equal(ours.state_dict()[k], theirs.state_dict()[k]) for k in ours.state_dict())
        features = torch.randn(4, 32, 3, 3)
        torch.manual_seed(1)
        expected = theirs.train()(features)
        torch.manual_seed(1)
        assert torch.equal(ours.train()(features), expected)


def test_a_small_cnn_job_never_imports_timm_or_torchvision():
    """timm, with torchvision, is ~2 s of a job's start-up on a CPU: only a timm model loads it. The registry (the
    workflow's config check) still lists the timm models, and the nasnet_mobile names are there on first use."""
    code = (
        "import sys\n"
        "from backdoor_eval import experiments, phase, poison, regularizers, train\n"
        "from backdoor_eval.cli import build_parser\n"
        "from backdoor_eval.models import MODELS, create_model\n"
        "build_parser()\n"
        "create_model('small_cnn', num_classes=3, width=2)\n"
        "assert {'resnet50', 'nasnet_large', 'nasnet_mobile'} <= set(MODELS.names())\n"
        "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules))\n"
        "from backdoor_eval.models import NASNetAMobile\n"
        "print(sorted(m for m in ('timm', 'torchvision') if m in sys.modules), NASNetAMobile.__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == ["[]", "['timm', 'torchvision'] NASNetAMobile"]


# ------------------------------------------------------------------------------ every model


def test_every_registered_model_has_a_small_test_configuration():
    """SMALL (tests/model_fixtures.py) keeps the parametrised model tests cheap; a new model needs a line there."""
    assert set(MODELS.names()) <= set(SMALL)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_registered_model_builds_without_pretrained_weights(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=3, pretrained=False, **SMALL.get(name, {})).eval()
    assert isinstance(model, Classifier)
    assert model.model_name == name
    with torch.no_grad():
        hidden, logits = model.forward_hidden(torch.randn(2, 3, 32, 32))
    assert hidden.shape == (2, model.num_features)
    assert logits.shape == (2, 3)


# ---------------------------------------------------------------------- the package's imports


def _imported_modules(path: Path) -> list[str]:
    """Absolute module names a source file imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names += [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def test_no_module_imports_a_private_timm_module():
    """Only timm's public API: nothing under timm.models._* (timm moves its private modules between releases)."""
    sources = sorted(Path(models.__file__).parent.glob("*.py"))
    assert {"__init__.py", "weights.py", "nasnet_mobile.py", "timm_models.py"} <= {path.name for path in sources}
    for path in sources:
        private = [
            name
            for name in _imported_modules(path)
            if name.split(".")[0] == "timm" and any(part.startswith("_") for part in name.split(".")[1:])
        ]
        assert not private, f"{path.name} imports private timm modules: {private}"
        assert "timm.models._" not in path.read_text(), f"{path.name} names a private timm module"
