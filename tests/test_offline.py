"""Offline compute jobs: the fetch plan, the fetch commands, and jobs that read files only (backdoor_eval.offline).

No real download is possible here: the hub's weights are stood in for by files built from the
reference shapes (timm's architecture with random weights, Cadene's checkpoint layout from
tests/data), the hub download by a fake downloader, and the network by a socket that refuses.
"""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import save_file

from backdoor_eval import offline
from backdoor_eval.cli import main as cli
from backdoor_eval.data import Cifar10, ImageFolder, remote_archive
from backdoor_eval.models import create_model, weights
from model_fixtures import one_thread, random_cadene_state_dict  # noqa: F401  (one_thread: autouse fixture)
from run_inputs import poisoned_synthetic_run
from test_data import class_files, md5_of, write_fake_cifar, write_zip
from test_workflow import REPO, SNAKEMAKE, env, job_counts, snakemake

PROXIES = ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture
def no_network(monkeypatch):
    """Every TCP/UDP connection of this process fails at once; the attempts are listed."""
    attempts = []
    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError(101, f"network is unreachable (test): {address}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", lambda self, address: connect(self, address))
    return attempts


@pytest.fixture
def offline_job(monkeypatch, no_network):
    """What every workflow job but the fetch rules runs with: OFFLINE_ENV, and here no network at all."""
    for name, value in offline.OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    return no_network


@pytest.fixture
def empty_caches(tmp_path, monkeypatch):
    """No cached hub weights: HF and torch-hub caches point at empty folders."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", offline.DOWNLOADS_OFF):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def reference_resnet18(seed: int = 0) -> dict[str, torch.Tensor]:
    """An ImageNet ResNet-18 state dict of the reference shapes (timm's layout, 1000 classes), random values."""
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False, num_classes=1000).state_dict()


# --------------------------------------------------------------------------- the plan


def test_each_pretrained_model_gets_one_weights_file_and_a_local_file_is_read_as_it_is():
    config = {
        "models": {
            "r50": {"arch": "resnet50", "pretrained": True, "weights": None},
            "r50_again": {"arch": "resnet50", "pretrained": True, "params": {"drop_rate": 0.1}},
            "mobile": {
                "arch": "nasnet_mobile",
                "pretrained": True,
                "weights": "https://h/x/nasnetamobile-7e03cead.pth",
            },
            "any": {"arch": "timm:resnet50.a1_in1k", "pretrained": True},
            "mine": {"arch": "small_cnn", "pretrained": True, "weights": "~/w/mine.pt"},
            "scratch": {"arch": "small_cnn", "pretrained": False, "weights": None},
        }
    }
    assert offline.model_weights(config, "r50") == (
        "resources/weights/resnet50.safetensors",
        offline.WeightsFetch("resnet50"),
    )
    assert offline.model_weights(config, "mobile") == (
        "resources/weights/nasnet_mobile/nasnetamobile-7e03cead.safetensors",
        offline.WeightsFetch("nasnet_mobile", "https://h/x/nasnetamobile-7e03cead.pth"),
    )
    assert offline.model_weights(config, "any")[0] == "resources/weights/timm/resnet50.a1_in1k.safetensors"
    assert offline.model_weights(config, "mine") == (os.path.expanduser("~/w/mine.pt"), None)
    assert offline.model_weights(config, "scratch") == (None, None)
    plan = offline.weights_to_fetch(config, config["models"])
    # two models of one architecture share its file; local files and untrained models fetch nothing
    assert sorted(plan) == [
        "resources/weights/nasnet_mobile/nasnetamobile-7e03cead.safetensors",
        "resources/weights/resnet50.safetensors",
        "resources/weights/timm/resnet50.a1_in1k.safetensors",
    ]
    assert offline.weights_to_fetch(config, ["scratch", "mine"]) == {}
    config["models"]["other"] = {
        "arch": "nasnet_mobile",
        "pretrained": True,
        "weights": "https://g/nasnetamobile-7e03cead.pth",
    }
    with pytest.raises(ValueError, match=r"models.mobile.weights .* and models.other.weights .* distinct file names"):
        offline.weights_to_fetch(config, ["mobile", "other"])


def test_datasets_that_download_get_their_archive_fetched_where_their_reader_reads_it():
    url = "https://example.org/data/folder.zip"
    config = {
        "datasets": {
            "cifar": {"kind": "cifar10", "params": {}},  # the official URL by default
            "local_cifar": {"kind": "cifar10", "params": {"path": "resources/cifar-10-python.tar.gz"}},
            "folder": {"kind": "imagefolder", "params": {"url": url, "cache_dir": "cache/here"}},
            "flowers": {"kind": "flowers", "params": {"path": "resources/flowers.zip"}},
            "synthetic": {"kind": "synthetic", "params": {"num_classes": 3}},
        }
    }
    assert offline.archives_to_fetch(config, config["datasets"]) == {
        "cifar": "resources/downloads/cifar-10-python.tar.gz",
        "folder": "cache/here/folder.zip",
    }
    assert remote_archive("cifar10", {}) == Cifar10().remote_archive()
    assert Cifar10().remote_archive().md5 == Cifar10.MD5
    assert ImageFolder(path="x.zip").remote_archive() is None
    config["datasets"]["clash"] = {
        "kind": "imagefolder",
        "params": {"url": "https://other.org/folder.zip", "cache_dir": "cache/here"},
    }
    with pytest.raises(
        ValueError, match=r"datasets clash and folder download different archives .* cache/here/folder.zip"
    ):
        offline.archives_to_fetch(config, ["folder", "clash"])


# --------------------------------------------------------------------------- dataset archives


def test_fetch_dataset_writes_the_archive_that_ingest_then_reads_with_the_network_off(tmp_path, monkeypatch, capsys):
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    write_fake_cifar(archive)
    params = {"url": archive.as_uri(), "md5": md5_of(archive), "cache_dir": str(tmp_path / "downloads")}
    target = tmp_path / "downloads" / "cifar-10-python.tar.gz"

    wrong = tmp_path / "elsewhere.tar.gz"
    assert cli(["fetch-dataset", "--dataset", "cifar10", "--params", json.dumps(params), "--out", str(wrong)]) == 2
    assert f"expected {target}" in capsys.readouterr().err and not wrong.exists()
    assert cli(["fetch-dataset", "--dataset", "cifar10", "--params", json.dumps(params), "--out", str(target)]) == 0
    assert target.read_bytes() == archive.read_bytes()

    # ingest, offline: reads the fetched file and never the URL
    archive.unlink()
    for name, value in offline.OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    store = tmp_path / "store"
    assert cli(["ingest", "--dataset", "cifar10", "--params", json.dumps(params), "--out", str(store)]) == 0
    assert json.loads((store / "manifest.json").read_text())["num_images"] == 12


def test_with_downloads_off_a_missing_archive_fails_at_once_naming_it_and_the_rule(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(offline.DOWNLOADS_OFF, "1")
    calls = []
    monkeypatch.setattr("urllib.request.urlopen", lambda *args, **kwargs: calls.append(args))
    params = {"url": "https://example.org/folder.zip", "cache_dir": str(tmp_path / "downloads")}
    start = time.monotonic()
    assert (
        cli(["ingest", "--dataset", "imagefolder", "--params", json.dumps(params), "--out", str(tmp_path / "s")]) == 2
    )
    err = capsys.readouterr().err
    assert time.monotonic() - start < 2 and calls == []
    assert f"dataset archive {tmp_path / 'downloads' / 'folder.zip'} does not exist" in err
    assert "fetch_dataset" in err and "BACKDOOR_EVAL_OFFLINE=1" in err
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- weights


def test_fetch_weights_saves_the_hub_backbone_which_then_loads_with_no_network(
    empty_caches, monkeypatch, no_network, capsys
):
    """The hub download is a fake downloader writing a file of the reference shapes into the HF cache."""
    reference = reference_resnet18(seed=1)
    calls = []

    def fake_hf_hub_download(repo_id, filename, revision=None):
        calls.append((repo_id, filename, revision))
        if filename == "model.safetensors" and len(calls) == 1 and fallback:
            raise weights.EntryNotFoundError(f"{repo_id} has no {filename}")
        path = empty_caches / "hf" / repo_id.replace("/", "--") / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if filename.endswith(".safetensors"):
            save_file(reference, path)
        else:
            torch.save(reference, path)
        return str(path)

    monkeypatch.setattr(weights, "hf_hub_download", fake_hf_hub_download)
    monkeypatch.setattr(weights, "_host_reachable", lambda url, timeout=None: True)
    for fallback, expected in ((False, ["model.safetensors"]), (True, ["model.safetensors", "pytorch_model.bin"])):
        calls.clear()
        out = empty_caches / f"resources/weights/resnet18-{fallback}.safetensors"
        assert cli(["fetch-weights", "--model", "resnet18", "--out", str(out)]) == 0, capsys.readouterr().err
        assert calls == [("timm/resnet18.tv_in1k", name, None) for name in expected]
        with safe_open(str(out), "pt") as saved:
            assert sorted(saved.keys()) == sorted(k for k in reference if not k.startswith("fc."))
            assert saved.metadata() == {"model": "resnet18", "source": "timm/resnet18.tv_in1k"}
            assert torch.equal(saved.get_tensor("layer4.1.conv2.weight"), reference["layer4.1.conv2.weight"])

    # a train job's view: the hub offline, downloads off, no network; the file alone gives the backbone
    for name, value in offline.OFFLINE_ENV.items():
        monkeypatch.setenv(name, value)
    model = create_model("resnet18", num_classes=4, pretrained=True, weights=out)
    state = model.backbone.state_dict()
    for key in ("conv1.weight", "bn1.running_var", "layer3.0.downsample.0.weight", "layer4.1.bn2.bias"):
        assert torch.equal(state[key], reference[key]), key
    assert model.head.weight.shape == (4, 512)
    assert no_network == []


def test_fetch_weights_converts_a_cadene_checkpoint_of_the_reference_shapes(tmp_path, offline_job):
    """Pre-seeding by hand: Cadene's NASNet-A Mobile checkpoint (its key and shape list, tests/data) becomes
    the file train reads; it loads with no network into the same backbone as the checkpoint itself."""
    checkpoint = tmp_path / "nasnetamobile-7e03cead.pth"
    torch.save(random_cadene_state_dict(seed=3), checkpoint)
    out = tmp_path / "resources/weights/nasnet_mobile.safetensors"
    assert cli(["fetch-weights", "--model", "nasnet_mobile", "--source", str(checkpoint), "--out", str(out)]) == 0
    from_file = create_model("nasnet_mobile", num_classes=5, pretrained=True, weights=out).backbone.state_dict()
    direct = create_model("nasnet_mobile", num_classes=5, pretrained=True, weights=checkpoint).backbone.state_dict()
    body = [k for k in direct if not k.startswith("last_linear.")]
    assert len(body) > 700 and all(torch.equal(from_file[k], direct[k]) for k in body)
    assert offline_job == []


def test_fetch_weights_errors_are_one_line_naming_the_cause(empty_caches, monkeypatch, capsys):
    out = empty_caches / "w.pth"
    assert cli(["fetch-weights", "--model", "resnet18", "--out", str(out)]) == 2
    assert "w.pth must end in .safetensors" in capsys.readouterr().err
    for proxy in PROXIES:
        monkeypatch.delenv(proxy, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    start = time.monotonic()
    assert cli(["fetch-weights", "--model", "resnet18", "--out", str(empty_caches / "w.safetensors")]) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - start < 5
    assert "'resnet18' (timm resnet18.tv_in1k)" in err and "unreachable" in err
    assert not (empty_caches / "w.safetensors").exists()
    assert cli(["fetch-weights", "--model", "small_cnn", "--out", str(empty_caches / "s.safetensors")]) == 2
    assert "'small_cnn' has no hub weights" in capsys.readouterr().err


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny poisoned synthetic set (3 classes x 30 images, 16 px) to train on."""
    synthetic = {"num_classes": 3, "per_class": 30, "size": 16, "seed": 0}
    return poisoned_synthetic_run(tmp_path_factory.mktemp("offline"), synthetic)


def train_args(tiny_run, out: Path, weights_file: Path) -> list[str]:
    root, store, parts, poisoned = tiny_run
    args = ["train", "--store", str(store), "--partitions", str(parts), "--poisoned", str(poisoned)]
    args += ["--model", "resnet18", "--model-params", json.dumps({"pretrained": True, "weights": str(weights_file)})]
    args += ["--train-params", json.dumps({"lr": 1e-4, "batch_size": 32, "max_epochs": 1, "patience": 1})]
    args += ["--seed", "0", "--device", "cpu", "--threads", "1", "--checkpoint", str(out / "ckpt" / "poison.pt")]
    outputs = {"model": "model.pt", "epochs": "epochs.parquet", "final": "final.json"}
    return args + [arg for name, file in outputs.items() for arg in (f"--out-{name}", str(out / file))]


def test_a_train_job_reads_its_weights_file_with_no_network(tiny_run, tmp_path, offline_job):
    weights_file = tmp_path / "resources/weights/resnet18.safetensors"
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    backbone.load_state_dict(reference_resnet18(seed=2))
    weights.save_backbone_weights(backbone, weights_file, model="resnet18", source="reference shapes")
    assert cli(train_args(tiny_run, tmp_path / "run", weights_file)) == 0
    final = json.loads((tmp_path / "run" / "final.json").read_text())
    assert final["epochs_run"] == 1 and final["model"] == "resnet18"
    assert offline_job == []  # not one connection tried


def test_a_missing_weights_file_fails_the_train_job_at_once_naming_it(tiny_run, tmp_path, offline_job, capsys):
    missing = Path("resources/weights/resnet18.safetensors")  # relative, as the workflow passes it
    start = time.monotonic()
    assert cli(train_args(tiny_run, tmp_path / "run", missing)) == 2
    err = capsys.readouterr().err
    assert time.monotonic() - start < 2
    assert f"weights file '{missing}' does not exist" in err and "fetch_weights" in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()  # before the phase's lock: nothing written
    assert offline_job == []


# --------------------------------------------------------------------------- the workflow


def pretrained_config(tmp_path: Path) -> dict:
    """Runs of resnet18 (hub weights), a URL checkpoint and a local file, on a synthetic set and a downloaded zip."""
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config = copy.deepcopy(config)
    config["name"] = "pretrained"
    config["datasets"]["synthetic"]["params"] = {"num_classes": 3, "per_class": 30, "size": 16, "seed": 0}
    config["datasets"]["synthetic"]["classes"] = ["class0", "class1", "class2"]
    config["datasets"]["folder"] = {
        "kind": "imagefolder",
        "params": {"url": "http://127.0.0.1:9/tiny.zip", "size": 16},
        "classes": ["cat", "dog", "emu"],
    }
    config["models"] = {
        "resnet18": {"arch": "resnet18", "pretrained": True, "weights": None},
        "mobile": {
            "arch": "nasnet_mobile",
            "pretrained": True,
            "weights": "http://127.0.0.1:9/nasnetamobile-7e03cead.pth",
        },
        "mine": {"arch": "small_cnn", "pretrained": True, "weights": str(tmp_path / "mine.pt"), "params": {"width": 4}},
        "scratch": {"arch": "small_cnn", "pretrained": False, "params": {"width": 4}},
    }
    config["train"].update(lr=1e-4, batch_size=32, max_epochs=1, patience=1)
    run = {"trigger": "bs", "poison_rate": 0.3}
    config["experiments"] = {
        "E1": {
            "dataset": "synthetic",
            "model": ["resnet18", "mobile", "mine", "scratch"],
            "poison_class": "class0",
            **run,
        },
        "E2": {"dataset": "folder", "model": "resnet18", "poison_class": "cat", **run},
    }
    config["outputs"] = {}
    for block in ("table1", "gallery"):
        config.pop(block)
    return config


@pytest.mark.slow
def test_dry_run_fetches_first_on_the_submitting_node_and_train_reads_the_files(tmp_path):
    config = pretrained_config(tmp_path)
    config_file = tmp_path / "pretrained.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # the local weights file is an input: missing, the dry run names it
    missing = snakemake("--configfile", str(config_file), "-n", workdir=tmp_path)
    assert missing.returncode != 0 and str(tmp_path / "mine.pt") in missing.stdout + missing.stderr

    (tmp_path / "mine.pt").write_bytes(b"")
    result = snakemake("--configfile", str(config_file), "-n", "-p", workdir=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = job_counts(output)
    assert (counts["fetch_weights"], counts["fetch_dataset"], counts["train"]) == (2, 1, 5)
    jobs = {}  # rule -> [(inputs, shell command)]
    for block in output.split("\nrule ")[1:]:
        rule, lines = block.split(":", 1)[0], block.splitlines()
        inputs = next((line.split("input: ", 1)[1].split(", ") for line in lines if "    input: " in line), [])
        command = next((line.split("Shell command: ", 1)[1] for line in lines if "Shell command: " in line), None)
        jobs.setdefault(rule, []).append((inputs, command))
    fetched = sorted(command.split("--out ", 1)[1].split()[0] for _, command in jobs["fetch_weights"])
    assert fetched == [
        "resources/weights/nasnet_mobile/nasnetamobile-7e03cead.safetensors",
        "resources/weights/resnet18.safetensors",
    ]
    assert [c.split("--out ", 1)[1].split()[0] for _, c in jobs["fetch_dataset"]] == ["resources/downloads/tiny.zip"]
    for _, command in jobs["fetch_weights"] + jobs["fetch_dataset"]:  # the network: the fetch rules only
        assert command.startswith("HF_HUB_OFFLINE=0 BACKDOOR_EVAL_OFFLINE=0 backdoor-eval fetch-")
    trains = []  # (model, weights in --model-params, whether the train job has that file as an input)
    for inputs, command in jobs["train"]:
        model_params = json.loads(command.split("--model-params '", 1)[1].split("'", 1)[0])
        weights_file = model_params.get("weights")
        has_input = (
            weights_file in inputs if weights_file else not any("weights" in i or i.endswith(".pt") for i in inputs)
        )
        trains.append((command.split("--model ", 1)[1].split()[0], weights_file, has_input))
    assert sorted(trains, key=str) == sorted(
        [
            ("nasnet_mobile", "resources/weights/nasnet_mobile/nasnetamobile-7e03cead.safetensors", True),
            ("resnet18", "resources/weights/resnet18.safetensors", True),  # on the synthetic set
            ("resnet18", "resources/weights/resnet18.safetensors", True),  # on the downloaded zip
            ("small_cnn", None, True),  # pretrained: false, no weights
            ("small_cnn", str(tmp_path / "mine.pt"), True),  # the config's own file, read as it is
        ],
        key=str,
    )
    assert sorted(inputs for inputs, _ in jobs["ingest"]) == [[], ["resources/downloads/tiny.zip"]]

    # the fetch rules are local rules: on a cluster they run on the submitting node
    assert set(snakemake_localrules(config_file, tmp_path)) >= {"fetch", "fetch_weights", "fetch_dataset", "ingest"}
    # `snakemake fetch` fetches exactly these three files
    fetch_only = snakemake("--configfile", str(config_file), "-n", "fetch", workdir=tmp_path)
    assert job_counts(fetch_only.stdout + fetch_only.stderr) == {
        "fetch_weights": 2,
        "fetch_dataset": 1,
        "fetch": 1,
        "total": 4,
    }


def snakemake_localrules(config_file: Path, workdir: Path) -> list[str]:
    """The workflow's local rules, as Snakemake parsed them (its Python API, in a subprocess)."""
    program = textwrap.dedent(
        f"""
        from pathlib import Path
        from snakemake.api import SnakemakeApi
        from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings

        with SnakemakeApi(OutputSettings(quiet=None)) as api:
            workflow = api.workflow(
                resource_settings=ResourceSettings(cores=1),
                config_settings=ConfigSettings(configfiles=[Path({str(config_file)!r})]),
                storage_settings=StorageSettings(),
                snakefile=Path({str(REPO / "Snakefile")!r}),
                workdir=Path({str(workdir)!r}),
            )
            print(" ".join(sorted(workflow._workflow._localrules)))
        """
    )
    result = subprocess.run(
        [str(SNAKEMAKE.parent / "python"), "-c", program], capture_output=True, text=True, env=env(), timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.split()


# Loaded by every Python process of the air-gapped run below (PYTHONPATH): the network refuses,
# and each process notes its command and offline variables.
SITECUSTOMIZE = textwrap.dedent(
    """
    import os, socket, sys

    _log = os.environ.get("OFFLINE_TEST_LOG")
    if _log:
        def _note(line):
            with open(_log, "a") as out:
                out.write(line + "\\n")

        _note(
            "process " + os.path.basename(sys.argv[0]) + " " + (sys.argv[1] if len(sys.argv) > 1 else "-")
            + " HF_HUB_OFFLINE=" + str(os.environ.get("HF_HUB_OFFLINE"))
            + " BACKDOOR_EVAL_OFFLINE=" + str(os.environ.get("BACKDOOR_EVAL_OFFLINE"))
        )
        _connect = socket.socket.connect

        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6):
                _note("connect " + repr(address) + " from " + " ".join(sys.argv[:2]))
                raise OSError(101, "network is unreachable (air-gapped test)")
            return _connect(self, address)

        socket.socket.connect = connect
    """
)


@pytest.mark.slow
def test_an_air_gapped_run_with_pre_seeded_resources_needs_no_network(tmp_path):
    """Pre-seeded weights (built from the reference shapes) and archive: no fetch job runs, every job runs
    with the hub offline and downloads off, no process opens a connection, and a pretrained run trains."""
    config = pretrained_config(tmp_path)
    config["models"] = {"resnet18": config["models"]["resnet18"]}
    config["experiments"] = {"E2": {**config["experiments"]["E2"]}}
    config_file = tmp_path / "air-gapped.yaml"
    config_file.write_text(yaml.safe_dump(config))
    # pre-seeded by hand, as docs/models.md says
    weights_file = tmp_path / "resources/weights/resnet18.safetensors"
    backbone = timm.create_model("resnet18", pretrained=False, num_classes=1000)
    backbone.load_state_dict(reference_resnet18(seed=3))
    weights.save_backbone_weights(backbone, weights_file, model="resnet18", source="reference shapes")
    (tmp_path / "resources/downloads").mkdir(parents=True)
    write_zip(tmp_path / "resources/downloads/tiny.zip", class_files("tiny/", {"cat": 20, "dog": 20, "emu": 20}))

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    log = tmp_path / "processes.log"
    environment = {k: v for k, v in env().items() if k not in PROXIES and k not in offline.OFFLINE_ENV}
    environment.update(
        PYTHONPATH=os.pathsep.join([str(site), environment.get("PYTHONPATH", "")]),
        OFFLINE_TEST_LOG=str(log),
        http_proxy="http://127.0.0.1:9",
        https_proxy="http://127.0.0.1:9",
    )
    run_id = "folder/resnet18/bs/a1.0/many-to-one/tcat/sall/r0.3/none/seed0"
    final = f"results/pretrained/runs/{run_id}/poison/final.json"
    result = subprocess.run(
        [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(config_file)]
        + ["--cores", "1", final],
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    logs = "\n".join(p.read_text() for p in (tmp_path / "results").rglob("*.log"))
    assert result.returncode == 0, result.stderr[-4000:] + logs[-3000:]
    assert json.loads((tmp_path / final).read_text())["epochs_run"] == 1

    lines = log.read_text().splitlines()
    assert [line for line in lines if line.startswith("connect")] == []
    jobs = [line.split()[2:] for line in lines if line.startswith("process backdoor-eval")]
    assert {command for command, *_ in jobs} >= {"ingest", "check-store", "partition", "poison", "train"}
    assert "fetch-weights" not in {command for command, *_ in jobs}  # the pre-seeded files are used
    assert all(flags == ["HF_HUB_OFFLINE=1", "BACKDOOR_EVAL_OFFLINE=1"] for _, *flags in jobs), jobs
    # ... set by the workflow, not by the environment it started in
    assert any(line.startswith("process snakemake") and "HF_HUB_OFFLINE=None" in line for line in lines)
