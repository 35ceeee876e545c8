"""Tests for backdoor_eval.models: the registry, the Classifier contract, NASNet-A Mobile, weights."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import timm
import torch
import torch.nn as nn

from backdoor_eval import models
from backdoor_eval.models import (
    MODELS,
    Classifier,
    NASNetAMobile,
    WeightsUnavailableError,
    convert_cadene_nasnet_mobile_state_dict,
    create_model,
)

DATA = Path(__file__).parent / "data"
CADENE_SHAPES = DATA / "nasnet_mobile_cadene_state_dict_shapes.json"
CADENE_LOGITS = DATA / "nasnet_mobile_cadene_reference_logits.json"

# small configurations so that every model runs in well under a second on a CPU
SMALL = {
    "small_cnn": dict(width=4),
    "resnet18": {},
    "resnet50": {},
    "nasnet_large": dict(num_features=192, stem_size=8),
    "nasnet_mobile": dict(cells_per_stage=2, num_features=192, stem_size=8),
    "timm:mobilenetv3_small_050": {},  # h (1024) is wider than the last feature map (288)
}
NUM_FEATURES = {
    "small_cnn": 32,
    "resnet18": 512,
    "resnet50": 2048,
    "nasnet_large": 192,
    "nasnet_mobile": 192,
    "timm:mobilenetv3_small_050": 1024,
}


@pytest.fixture(autouse=True)
def _one_thread():
    # one intra-op thread: on a busy 2-core machine two threads spin against each other (10x slower)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _cadene_reference() -> list[tuple[str, tuple[int, ...]]]:
    data = json.loads(CADENE_SHAPES.read_text())
    return [(key, tuple(shape)) for key, shape in data["state_dict"]]


def _random_cadene_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Tensors with the Cadene checkpoint's keys and shapes; BatchNorm statistics kept plausible."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in _cadene_reference():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7, dtype=torch.long)
        elif key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:
            fan_in = max(1, int(torch.tensor(shape[1:]).prod())) if len(shape) > 1 else 10
            state[key] = torch.randn(shape, generator=generator) / fan_in**0.5
    return state


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


# -------------------------------------------------------------------------- NASNet-A Mobile


def test_full_nasnet_mobile_has_the_published_size():
    model = create_model("nasnet_mobile", num_classes=1000)
    num_parameters = sum(p.numel() for p in model.parameters())
    assert num_parameters == 5_289_978
    assert abs(num_parameters - 5.3e6) / 5.3e6 < 0.02
    assert model.num_features == 1056
    backbone = model.backbone
    assert backbone.conv0.conv.out_channels == 32
    assert [n for n in backbone.layer_names if n.startswith("cell_")] == [f"cell_{i}" for i in range(12)]
    assert backbone.layer_names.index("reduction_cell_0") == 4
    assert backbone.layer_names.index("reduction_cell_1") == 9
    assert backbone.cell_0.conv_1x1.conv.out_channels == 44  # 1056 / 24 filters in the first stage


def test_nasnet_mobile_is_registered_with_timm():
    assert timm.is_model("nasnetamobile")
    model = timm.create_model("nasnetamobile", num_classes=7, cells_per_stage=1, num_features=96, stem_size=8)
    assert isinstance(model, NASNetAMobile)
    assert model.pretrained_cfg["url"] == models.CADENE_NASNET_MOBILE_URL
    assert model.pretrained_cfg["label_offset"] == 1
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 7)


def test_cadene_mapping_covers_every_checkpoint_key_with_identical_shapes():
    reference = _cadene_reference()
    assert len(reference) == 1318
    model = NASNetAMobile(num_classes=1001)
    own_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    mapped = convert_cadene_nasnet_mobile_state_dict({k: torch.empty(s) for k, s in reference}, model)
    assert len(mapped) == len(reference)  # one-to-one
    assert {k: tuple(v.shape) for k, v in mapped.items()} == own_shapes
    # only the cell numbering changes: Cadene's 0-3, 6-9, 12-15 become 0-11
    renamed = {k: m for k, m in zip((k for k, _ in reference), mapped) if k != m}
    assert {k.split(".")[0] for k in renamed} == {f"cell_{i}" for i in (6, 7, 8, 9, 12, 13, 14, 15)}


def test_cadene_state_dict_loads_and_reproduces_the_tensors():
    cadene = _random_cadene_state_dict(seed=1)
    model = NASNetAMobile(num_classes=1001)
    model.load_state_dict(convert_cadene_nasnet_mobile_state_dict(cadene, model), strict=True)
    loaded = model.state_dict()
    assert torch.equal(loaded["cell_4.conv_1x1.conv.weight"], cadene["cell_6.conv_1x1.conv.weight"])
    assert torch.equal(loaded["cell_11.comb_iter_4_left.bn_sep_2.running_var"],
                       cadene["cell_15.comb_iter_4_left.bn_sep_2.running_var"])
    converted = convert_cadene_nasnet_mobile_state_dict(cadene, model)
    assert all(torch.equal(loaded[k], v) for k, v in converted.items())


def test_cadene_mapping_handles_old_and_wrapped_checkpoints():
    cadene = _random_cadene_state_dict(seed=2)
    old = {f"module.{k}": v for k, v in cadene.items() if not k.endswith("num_batches_tracked")}
    model = NASNetAMobile(num_classes=1001)
    converted = convert_cadene_nasnet_mobile_state_dict(old, model)
    model.load_state_dict(converted, strict=True)
    assert int(model.state_dict()["conv0.bn.num_batches_tracked"]) == 0
    # already converted: unchanged
    again = convert_cadene_nasnet_mobile_state_dict(converted, model)
    assert again.keys() == converted.keys()


def test_nasnet_mobile_loads_a_cadene_checkpoint_file_with_a_fresh_head(tmp_path):
    cadene = _random_cadene_state_dict(seed=3)
    path = tmp_path / "nasnetamobile-7e03cead.pth"
    torch.save(cadene, path)
    torch.manual_seed(0)
    model = create_model("nasnet_mobile", num_classes=5, pretrained=True, weights=path)
    backbone_state = model.backbone.state_dict()
    assert torch.equal(backbone_state["cell_9.conv_prev_1x1.conv.weight"], cadene["cell_13.conv_prev_1x1.conv.weight"])
    assert torch.equal(backbone_state["conv0.conv.weight"], cadene["conv0.conv.weight"])
    assert model.head.weight.shape == (5, 1056)
    # even with 1001 classes the head is new, not the checkpoint's
    model_1001 = create_model("nasnet_mobile", num_classes=1001, pretrained=True, weights=str(path))
    assert not torch.equal(model_1001.head.weight, cadene["last_linear.weight"])


def test_nasnet_mobile_computes_what_the_cadene_model_computes():
    """Same weights, same input: the logits of Cadene's NASNetAMobile (tests/data), to float rounding.

    At 224 px against its own forward; at 32 px against its features averaged over the 1x1 map.
    """
    reference = json.loads(CADENE_LOGITS.read_text())
    model = NASNetAMobile(num_classes=1001)
    cadene = _random_cadene_state_dict(seed=reference["weights_seed"])
    model.load_state_dict(convert_cadene_nasnet_mobile_state_dict(cadene, model))
    model.eval()
    for size, expected in reference["logits"].items():
        generator = torch.Generator().manual_seed(reference["input_seed"])
        images = torch.randn(2, 3, int(size), int(size), generator=generator)
        with torch.no_grad():
            logits = model(images)[:, reference["classes"]]
        torch.testing.assert_close(logits, torch.tensor(expected), atol=1e-4, rtol=1e-4)


# --------------------------------------------------------------------------- pretrained weights


def test_weights_file_of_a_saved_classifier_loads_with_a_fresh_head(tmp_path):
    torch.manual_seed(0)
    trained = create_model("small_cnn", num_classes=10, width=4)
    path = tmp_path / "model.pt"
    torch.save({"state_dict": trained.state_dict(), "model": "small_cnn"}, path)
    loaded = create_model("small_cnn", num_classes=3, pretrained=True, weights=path, width=4)
    for key, value in trained.backbone.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(loaded.backbone.state_dict()[key], value), key
    assert loaded.head.weight.shape == (3, 32)


def test_weights_that_do_not_fit_are_a_value_error(tmp_path):
    path = tmp_path / "other.pt"
    torch.save(create_model("small_cnn", num_classes=3, width=4).state_dict(), path)
    with pytest.raises(ValueError, match=r"do not fit model 'small_cnn'"):
        create_model("small_cnn", num_classes=3, pretrained=True, weights=path, width=8)
    with pytest.raises(ValueError, match=r"do not fit model 'resnet18'.*missing keys"):
        create_model("resnet18", num_classes=3, pretrained=True, weights=path)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(WeightsUnavailableError, match=r"'resnet18'.*does not exist.*weights:"):
        create_model("resnet18", num_classes=3, pretrained=True, weights=tmp_path / "absent.pth")
    with pytest.raises(WeightsUnavailableError, match=r"'small_cnn' has no hub weights.*weights:"):
        create_model("small_cnn", num_classes=3, pretrained=True)


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached hub weights: HF and torch-hub caches point at empty folders."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path


@pytest.mark.parametrize("name", ["resnet18", "nasnet_mobile", "nasnet_large"])
def test_pretrained_offline_fails_fast_and_names_the_fix(name, empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=rf"model '{name}'.*HF_HUB_OFFLINE.*Set weights: to a local file"):
        create_model(name, num_classes=3, pretrained=True, **SMALL[name])
    assert time.monotonic() - start < 5


def test_pretrained_with_unreachable_hub_fails_fast(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError, match=r"'resnet18'.*unreachable.*Set weights:"):
        create_model("resnet18", num_classes=3, pretrained=True)
    with pytest.raises(WeightsUnavailableError, match=r"'nasnet_mobile' \(timm nasnetamobile\).*unreachable.*Set weights:"):
        create_model("nasnet_mobile", num_classes=3, pretrained=True, weights="http://127.0.0.1:9/w.pth")
    assert time.monotonic() - start < 5


def test_cached_hub_weights_load_offline(empty_caches, monkeypatch):
    """A checkpoint already in the torch-hub cache loads with no network, through timm's loader."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cadene = _random_cadene_state_dict(seed=4)
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(cadene, checkpoints / "nasnetamobile-7e03cead.pth")
    model = create_model("nasnet_mobile", num_classes=4, pretrained=True)
    state = model.backbone.state_dict()
    assert torch.equal(state["cell_7.comb_iter_0_left.separable_1.depthwise_conv2d.weight"],
                       cadene["cell_9.comb_iter_0_left.separable_1.depthwise_conv2d.weight"])
    assert model.head.weight.shape == (4, 1056)
    # through timm directly: 1000 ImageNet classes, the background row dropped (label_offset)
    imagenet = timm.create_model(
        "nasnetamobile", pretrained=True,
        pretrained_cfg_overlay=dict(file=str(checkpoints / "nasnetamobile-7e03cead.pth")),
    )
    assert torch.equal(imagenet.last_linear.weight, cadene["last_linear.weight"][1:])


@pytest.mark.parametrize("cache", ["torch_hub", "hugging_face"])
def test_resnet_weights_in_either_cache_load_offline(cache, empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(5)
    imagenet = timm.create_model("resnet18", num_classes=1000)
    if cache == "torch_hub":  # where torchvision and timm keep the model zoo file
        path = empty_caches / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
        path.parent.mkdir(parents=True)
        torch.save(imagenet.state_dict(), path)
    else:  # the layout huggingface_hub writes
        from safetensors.torch import save_file

        repo = empty_caches / "hf" / "models--timm--resnet18.tv_in1k"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text("0123abcd")
        (repo / "snapshots" / "0123abcd").mkdir(parents=True)
        save_file(imagenet.state_dict(), repo / "snapshots" / "0123abcd" / "model.safetensors")
    model = create_model("resnet18", num_classes=6, pretrained=True)
    assert torch.equal(model.backbone.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    assert torch.equal(model.backbone.bn1.running_var, imagenet.bn1.running_var)
    assert model.head.weight.shape == (6, 512)
