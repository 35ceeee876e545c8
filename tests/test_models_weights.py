"""Tests for backdoor_eval.models.weights: weights files, the hub caches, failing fast and clearly offline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
import time

import pytest
import timm
import torch

from backdoor_eval.models import WeightsUnavailableError, create_model
from model_fixtures import SMALL, one_thread, random_cadene_state_dict  # noqa: F401  (one_thread: autouse fixture)


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
    with pytest.raises(
        WeightsUnavailableError, match=r"'nasnet_mobile' \(timm nasnetamobile\).*unreachable.*Set weights:"
    ):
        create_model("nasnet_mobile", num_classes=3, pretrained=True, weights="http://127.0.0.1:9/w.pth")
    assert time.monotonic() - start < 5


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A local HTTP server (no proxy, online) for the files in the folder it yields with its base URL."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    for proxy in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(proxy, raising=False)
    served = tmp_path / "served"
    served.mkdir()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=served))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_weights_url_downloads_once_into_the_torch_hub_cache_checking_the_hash(empty_caches, weights_server):
    served, base_url = weights_server
    torch.manual_seed(0)
    trained = create_model("small_cnn", num_classes=3, width=4)
    torch.save(trained.state_dict(), served / "weights.pth")
    # torch.hub's convention: a file name <name>-<hex>.<ext> carries a prefix of the file's SHA-256
    name = f"small_cnn-{hashlib.sha256((served / 'weights.pth').read_bytes()).hexdigest()[:8]}.pth"
    (served / "weights.pth").rename(served / name)
    loaded = create_model("small_cnn", num_classes=3, pretrained=True, weights=f"{base_url}/{name}", width=4)
    assert torch.equal(loaded.backbone.stem[0].weight, trained.backbone.stem[0].weight)
    cached = empty_caches / "torch" / "hub" / "checkpoints" / name
    assert cached.is_file()
    # once: the next load reads the cache
    (served / name).unlink()
    again = create_model("small_cnn", num_classes=3, pretrained=True, weights=f"{base_url}/{name}", width=4)
    assert torch.equal(again.backbone.stem[0].weight, trained.backbone.stem[0].weight)
    # a file whose name promises another hash is refused and not cached
    (served / "small_cnn-deadbeef.pth").write_bytes(cached.read_bytes())
    url = f"{base_url}/small_cnn-deadbeef.pth"
    with pytest.raises(WeightsUnavailableError, match=r"download of .*-deadbeef\.pth failed.*hash.*Set weights:"):
        create_model("small_cnn", num_classes=3, pretrained=True, weights=url, width=4)
    assert not (cached.parent / "small_cnn-deadbeef.pth").exists()


def test_cached_hub_weights_load_offline(empty_caches, monkeypatch):
    """A checkpoint already in the torch-hub cache loads with no network, through timm's loader."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cadene = random_cadene_state_dict(seed=4)
    checkpoints = empty_caches / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(cadene, checkpoints / "nasnetamobile-7e03cead.pth")
    model = create_model("nasnet_mobile", num_classes=4, pretrained=True)
    state = model.backbone.state_dict()
    assert torch.equal(
        state["cell_7.comb_iter_0_left.separable_1.depthwise_conv2d.weight"],
        cadene["cell_9.comb_iter_0_left.separable_1.depthwise_conv2d.weight"],
    )
    assert model.head.weight.shape == (4, 1056)
    # through timm directly: 1000 ImageNet classes, the background row dropped (label_offset)
    imagenet = timm.create_model(
        "nasnetamobile",
        pretrained=True,
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
