"""The Snakemake workflow: dry-run job counts, GPU slots under Snakemake, a real two-run slice."""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from backdoor_eval import configview as cv
from backdoor_eval import experiments as ex
from backdoor_eval.triggers import fitted_triggers

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SNAKEMAKE = BIN / "snakemake"


def env() -> dict[str, str]:
    """The test interpreter's bin folder first on PATH, so jobs find `backdoor-eval`."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def snakemake(*args: str, workdir: Path, snakefile: Path = REPO / "Snakefile", timeout: int = 600):
    return subprocess.run(
        [str(SNAKEMAKE), "-s", str(snakefile), "-d", str(workdir), *args],
        capture_output=True,
        text=True,
        env=env(),
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run: rule -> count."""
    table = output[output.index("Job stats:") :]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def expected_counts(config: dict) -> dict[str, int]:
    """Job counts implied by the config, computed independently of the rules."""
    runs = ex.union(ex.expand(config))
    policy = config.get("split", "per-run")
    splits = {r: r.split(policy) for r in runs}
    partitions = {(r.dataset, splits[r]) for r in runs}
    # One fit per fitted trigger kind (lv) and split its runs use, and Fig. 2's of the triggers it shows.
    fits = {(cv.trigger_kind(config, r.trigger), r.dataset, splits[r]) for r in runs if cv.needs_fit(config, r.trigger)}
    if config.get("gallery"):
        gallery = (config["gallery"]["dataset"], f"seed{config['gallery'].get('seed', 0)}")  # a seed's shared split
        partitions.add(gallery)
        shown = [name for name in cv.trigger_names(config) if cv.needs_fit(config, name)]
        fits |= {(cv.trigger_kind(config, name), *gallery) for name in shown}
    ingested = {r.dataset for r in runs} | {config[b]["dataset"] for b in ("table1", "gallery") if config.get(b)}
    # fetched first (local rules): each pretrained architecture's hub weights or weights URL (not a local
    # file), and each dataset archive that a reader would download (cifar10 by its url, others with a url)
    weights = {
        (spec.get("arch"), spec.get("weights"))
        for spec in (config["models"][m] for m in {r.model for r in runs})
        if spec.get("pretrained") and (spec.get("weights") is None or str(spec["weights"]).startswith("http"))
    }
    archives = set()
    for spec in (config["datasets"][d] for d in ingested):
        params = spec.get("params") or {}
        url = params.get("url", "https://x/cifar-10-python.tar.gz" if spec["kind"] == "cifar10" else None)
        if url and not params.get("path"):
            archives.add((params.get("cache_dir", "resources/downloads"), url.rsplit("/", 1)[1]))
    counts = {
        "fetch_weights": len(weights),
        "fetch_dataset": len(archives),
        "ingest": len({r.dataset for r in runs} | ({config["table1"]["dataset"]} if config.get("table1") else set())),
        "partition": len(partitions),
        **{f"fit_{kind}": sum(fit[0] == kind for fit in fits) for kind in fitted_triggers()},
        "poison": len({r.poison_id(policy) for r in runs}),
        "train": len(runs),
        "retrain": len(ex.retrain_runs(config)),
        "summarize": len(runs),
        "membership": 1,
        "aggregate": 1,
        "all": 1,
    }
    outputs = cv.outputs(config)
    per_rule = {
        "retraining_table": ("table2", "table3"),
        "experiment_table": ("table4", "table5", "table_optimizer"),
        "figure": ("fig4", "fig5", "fig6", "fig7", "fig_optimizer"),
    }
    for rule, names in per_rule.items():
        if any(name in outputs for name in names):
            counts[rule] = sum(name in outputs for name in names)
    for block, rule in (("table1", "table1"), ("gallery", "gallery")):
        if config.get(block):
            counts[rule] = 1
    counts.update(analysis_counts(config))
    counts = {rule: count for rule, count in counts.items() if count}  # the dry run lists rules with jobs
    counts["total"] = sum(counts.values())
    return counts


def analysis_counts(config: dict) -> dict[str, int]:
    """Jobs of the analyses (docs/detection.md): one per run and method, then their gathering and outputs."""
    from backdoor_eval.analyses import plan

    jobs = plan.jobs(config, ex.expand(config))
    detections = bool(plan.experiment_methods(config))
    defenses = bool(plan.experiment_methods(config, plan.FILTER_KEY))
    return {
        "analyze": len(jobs["analyze"]),
        "filter_retrain": len(jobs["filter_retrain"]),
        "analysis_membership": int(detections or defenses),
        "aggregate_detections": int(detections),
        "detection_table": int(detections),
        "detection_figure": len(plan.detection_figures(config, cv.outputs(config))),
        "aggregate_defenses": int(defenses),
        "defense_table": int(defenses),
    }


def dry_run(config_file: Path, workdir: Path) -> dict[str, int]:
    result = snakemake("--configfile", str(config_file), "-n", "--quiet", "rules", workdir=workdir)
    assert result.returncode == 0, result.stderr[-3000:]
    return job_counts(result.stdout + result.stderr)


def test_quickstart_dry_run_job_counts(tmp_path):
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    counts = dry_run(REPO / "config" / "quickstart.yaml", tmp_path)
    assert counts == expected_counts(config)
    assert counts["train"] == 27 and counts["retrain"] == 12 and counts["poison"] == 19


def test_a_new_fitted_trigger_gets_its_fit_jobs_with_no_other_edit(tmp_path, fitted_toy):
    """The toy fitted trigger (tests/fitted_trigger.py), registered in the Snakemake process only: its
    fit rule, its fit per split, and its poison and gallery jobs given the fit come from its class."""
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config["triggers"]["toy"] = {"kind": fitted_toy.NAME, "params": {"shade": 0.5}}
    config["experiments"]["E1"]["trigger"] = ["bs", "toy"]
    config["experiments"]["E2"]["trigger"] = ["bs", "toy"]
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(config))
    register = (
        f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); import fitted_trigger; fitted_trigger.register()"
    )
    argv = ["snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(path), "-n", "-p"]
    command = f"{register}; from snakemake.cli import main; sys.argv = {argv!r}; main()"
    result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, env=env(), timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    counts = job_counts(output)
    assert counts == expected_counts(config) and counts["fit_toyfit"] == 1  # the quickstart's split is shared
    fit = "results/quickstart/data/synthetic/seed0/toyfit_fit.npz"
    assert (
        "backdoor-eval fit-toyfit --store results/quickstart/data/synthetic/store --partitions "
        f"results/quickstart/data/synthetic/seed0/partitions.npz --split seed0 --shade 0.5 --out {fit} >"
    ) in output
    assert f"--trigger toyfit --trigger-params '{{}}' --toyfit-fit {fit} --out " in output
    assert re.search(rf"backdoor-eval gallery .*--lv-fit \S+/lv_fit.npz --toyfit-fit {fit} --triggers", output)


@pytest.mark.slow
def test_paper_dry_run_job_counts(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    counts = dry_run(REPO / "config" / "config.yaml", tmp_path)
    assert counts == expected_counts(config)
    assert (counts["train"], counts["summarize"], counts["retrain"]) == (952, 952, 630)
    # A split per run (the paper's): each run its own partitions and poisoned set; every lv run its own fit.
    assert (counts["poison"], counts["partition"], counts["fit_lv"], counts["ingest"]) == (952, 953, 265, 2)
    # Fetched first on the submitting node: the three models' ImageNet weights and the CIFAR-10 archive.
    assert (counts["fetch_weights"], counts["fetch_dataset"], counts["total"]) == (3, 1, 4725)


@pytest.mark.slow
def test_paper_dry_run_shows_nasnet_cifar10_input_sizes_and_per_run_splits(tmp_path):
    result = snakemake("--configfile", str(REPO / "config" / "config.yaml"), "-n", "-p", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    output = (result.stdout + result.stderr).splitlines()
    commands = [line.split("Shell command: ", 1)[1] for line in output if "Shell command: backdoor-eval train " in line]
    sizes = {}
    for line in commands:
        model = re.search(r"--model (\S+)", line).group(1)
        dataset = re.search(r"--store results/paper/data/(\w+)/store", line).group(1)
        size = json.loads(re.search(r"--train-params '([^']*)'", line).group(1))["input_size"]
        sizes.setdefault((dataset, model), set()).add(size)
    assert sizes[("cifar10", "nasnet_large")] == {331}
    assert sizes[("cifar10", "nasnet_mobile")] == {224}
    assert sizes[("cifar10", "resnet50")] == {None}
    partitions = {re.search(r"--partitions (\S+)", line).group(1) for line in commands}
    assert len(partitions) == len(commands) == 952  # one split per run
    assert all(re.fullmatch(r"results/paper/data/\w+/seed\d+-[0-9a-f]{16}/partitions\.npz", p) for p in partitions)


def test_bad_config_fails_before_any_job_naming_the_key(tmp_path):
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config["experiments"]["E4"]["alpha"] = [0.1, 0.5, 1.0, 1.5]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode != 0
    assert "experiments.E4.alpha[3]: alpha=1.5 is outside the allowed range [0, 1]" in result.stdout + result.stderr


GPU_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input:
            "a.txt",
            "b.txt",


    rule slot:
        output:
            "{name}.txt",
        resources:
            gpu=1,
        shell:
            "python slot.py {output}"
    """
)
# What `train --gpu-lock-dir` does around a phase: hold a slot while it runs, on the slot's device.
SLOT_PROGRAM = textwrap.dedent(
    """
    import os, sys, time
    from backdoor_eval.gpus import gpu_slot

    with gpu_slot("locks", num_gpus=2), open(sys.argv[1], "w") as out:
        out.write(f"{time.time()} {os.environ['CUDA_VISIBLE_DEVICES']} ")
        time.sleep(2)
        out.write(f"{time.time()}")
    """
)


def run_gpu_snakefile(tmp_path: Path, gpus: int) -> list[tuple[float, str, float]]:
    snakefile = tmp_path / "Snakefile"
    snakefile.write_text(GPU_SNAKEFILE)
    (tmp_path / "slot.py").write_text(SLOT_PROGRAM)
    result = snakemake("--cores", "2", "--resources", f"gpu={gpus}", workdir=tmp_path, snakefile=snakefile, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = []
    for name in ("a", "b"):
        start, device, end = (tmp_path / f"{name}.txt").read_text().split()
        jobs.append((float(start), device, float(end)))
    return sorted(jobs)


def test_concurrent_gpu_jobs_get_distinct_devices(tmp_path):
    (start_a, device_a, end_a), (start_b, device_b, end_b) = run_gpu_snakefile(tmp_path, gpus=2)
    assert start_b < end_a  # they did overlap
    assert {device_a, device_b} == {"0", "1"}


def test_one_gpu_serialises_the_jobs(tmp_path):
    (start_a, device_a, end_a), (start_b, device_b, end_b) = run_gpu_snakefile(tmp_path, gpus=1)
    assert start_b >= end_a
    assert device_a == device_b == "0"  # the slot is free again for the second job


def slice_config() -> dict:
    """Two runs (bs and sin) of a tiny synthetic set, every output kind built from them."""
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config = copy.deepcopy(config)
    config["name"] = "slice"
    config["datasets"]["synthetic"]["params"] = {"num_classes": 3, "per_class": 60, "size": 16, "seed": 0}
    config["datasets"]["synthetic"]["classes"] = ["class0", "class1", "class2"]
    config["train"].update(max_epochs=2, patience=1, retrain_epochs=1)
    config["experiments"] = {
        "E1": {"dataset": "synthetic", "model": "small_cnn", "trigger": ["bs", "sin"], "poison_class": "class0"},
    }
    config["outputs"] = {"table2": "E1", "table3": "E1", "fig7": "E1"}
    config["table1"] = {"dataset": "synthetic", "poison_rate": 0.1}
    config["gallery"] = {"dataset": "synthetic", "seed": 0, "image_index": 0}
    return config


@pytest.mark.slow
def test_two_run_slice_of_the_real_workflow(tmp_path):
    import pandas as pd

    config_file = tmp_path / "slice.yaml"
    config_file.write_text(yaml.safe_dump(slice_config()))
    result = snakemake("--configfile", str(config_file), "--cores", "2", workdir=tmp_path)
    logs = "\n".join(p.read_text() for p in (tmp_path / "results" / "slice" / "logs").rglob("*.log"))
    assert result.returncode == 0, result.stderr[-4000:] + logs[-4000:]

    results = tmp_path / "results" / "slice"
    runs = pd.read_parquet(results / "runs.parquet")
    assert sorted(runs["trigger"]) == ["bs", "sin"]
    assert set(runs["experiment"]) == {"E1"} and set(runs["phase"]) == {"poison"}
    assert set(runs["run_id"]) == {
        "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.1/none/seed0",
        "synthetic/small_cnn/sin/a0.1/many-to-one/tclass0/sall/r0.1/none/seed0",
    }
    for name in ("table1", "table2", "table3"):
        for ext in ("csv", "md"):
            assert (results / "tables" / f"{name}.{ext}").stat().st_size > 0
    # The tables are computed from the runs: Table 2's cells are the runs' ASRs, Table 3's their accuracies.
    table2 = pd.read_csv(results / "tables" / "table2.csv")
    table3 = pd.read_csv(results / "tables" / "table3.csv")
    by_trigger = runs.set_index("trigger")
    for trigger, column in (("bs", "small_cnn / Square"), ("sin", "small_cnn / Sine")):
        assert table2[column].iloc[0] == pytest.approx(by_trigger.loc[trigger, "adversarial_success_rate"])
        clean_row = table3[table3["Split"] == "Clean"].iloc[0]
        assert clean_row[column] == pytest.approx(by_trigger.loc[trigger, "clean_val_accuracy"])
    # ... and the runs' rows are their final.json metrics.
    for run_id, row in runs.set_index("run_id").iterrows():
        final = json.loads((results / "runs" / run_id / "poison" / "final.json").read_text())
        assert row["adversarial_success_rate"] == pytest.approx(final["adversarial_success_rate"])
    for name in ("fig2", "fig7"):
        for ext in ("png", "pdf"):
            assert (results / "figures" / f"{name}.{ext}").stat().st_size > 0
    # No retraining asked for, so the poison model (temp) is gone once nothing needs it.
    assert not list((results / "runs").rglob("model.pt"))
    assert (results / "membership.json").is_file()

    # Every file the jobs left is a declared output (or inside a declared directory output);
    # logs and benchmarks are the rules' declared log: and benchmark: files, and each training
    # phase leaves its empty lock file beside its (deleted) checkpoint (backdoor_eval.locks).
    summary = snakemake("--configfile", str(config_file), "--summary", workdir=tmp_path)
    assert summary.returncode == 0, summary.stderr[-3000:]
    declared = {line.split("\t")[0] for line in summary.stdout.splitlines()[1:] if "\t" in line}
    assert "results/slice/tables/table2_n.csv" in declared
    written = sorted(path.relative_to(tmp_path).as_posix() for path in results.rglob("*") if path.is_file())
    undeclared = [
        path
        for path in written
        if path not in declared
        and not any(path.startswith(folder + "/") for folder in declared)
        and not path.startswith(("results/slice/logs/", "results/slice/benchmarks/"))
    ]
    locks = [path for path in undeclared if path.startswith("results/slice/checkpoints/")]
    assert sorted(locks) == sorted(f"results/slice/checkpoints/{run_id}/poison.pt.lock" for run_id in runs["run_id"])
    assert all((tmp_path / path).stat().st_size == 0 for path in locks)
    assert [path for path in undeclared if path not in locks] == []

    # The rows record the code and the full training settings the jobs used.
    assert runs["package_version"].notna().all() and not runs["untrained"].any()
    assert json.loads(runs["train_params"].iloc[0])["augment"] == "none"

    # A default written out (augment: none) is the same setting: nothing to rerun.
    spelled_out = slice_config()
    spelled_out.setdefault("train", {})["augment"] = "none"
    config_file.write_text(yaml.safe_dump(spelled_out))
    dry = snakemake("--configfile", str(config_file), "-n", workdir=tmp_path)
    assert dry.returncode == 0 and "Nothing to be done" in dry.stdout + dry.stderr, dry.stdout[-3000:]

    # A partitions file deleted after its runs finished: the dry run says what rebuilding it retrains.
    from backdoor_eval import experiments as ex

    splits = [cv.split_of(spelled_out, ex.Run.from_run_id(run_id)) for run_id in sorted(runs["run_id"])]
    partitions = results / "data" / "synthetic" / splits[0] / "partitions.npz"
    partitions.rename(tmp_path / "saved.npz")
    dry = snakemake("--configfile", str(config_file), "-n", workdir=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "1 partitions file(s) were deleted after runs of their split finished" in dry.stdout + dry.stderr
    assert f"will train again {splits.count(splits[0])} finished run(s)" in dry.stdout + dry.stderr
    (tmp_path / "saved.npz").rename(partitions)

    # Adding retraining later: the dry run says, before any job, which poison phases train again and why.
    config = slice_config()
    config["experiments"]["E1"]["retrain"] = True
    config_file.write_text(yaml.safe_dump(config))
    dry = snakemake("--configfile", str(config_file), "-n", workdir=tmp_path)
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert "2 finished poison phase(s) will be trained again" in dry.stdout + dry.stderr
    assert "keep_models: true" in dry.stdout + dry.stderr


# --------------------------------------------------------------------------- the workflow CLI area


def test_expand_cli_prints_the_counts(capsys):
    from backdoor_eval.cli import main

    assert main(["expand", "--config", str(REPO / "config" / "config.yaml")]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^E4\s+432\s+poison\+clean$", out, re.M)
    assert "distinct runs (train jobs): 952; retrain jobs: 630" in out


def test_expand_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    from backdoor_eval.cli import main

    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config["experiments"]["E6"]["source"] = ["class0"]
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["expand", "--config", str(path)]) == 2
    assert "experiments.E6.source[0]: 'class0' is the poison class" in capsys.readouterr().err


def test_expand_cli_names_the_file_and_line_of_a_yaml_syntax_error(tmp_path, capsys):
    from backdoor_eval.cli import main

    lines = (REPO / "config" / "quickstart.yaml").read_text().splitlines()
    bad_line = lines.index("  lr: 3.0e-3") + 1
    lines[bad_line - 1] = "  lr: [3.0e-3"  # an unclosed list
    path = tmp_path / "broken.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert main(["expand", "--config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.splitlines()) == 1, captured.err
    match = re.fullmatch(
        rf"backdoor-eval expand: error: config {re.escape(str(path))}, line (\d+), column \d+: "
        r"YAML syntax error: expected ',' or '\]', but got ':'\n",
        captured.err,
    )
    assert match, captured.err
    assert int(match.group(1)) in (bad_line, bad_line + 1)  # where the parser notices the unclosed list


def test_membership_cli_writes_the_document(tmp_path):
    import json

    from backdoor_eval.cli import main

    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    out = tmp_path / "membership.json"
    assert (
        main(["membership", "--config-json", json.dumps(config), "--results-dir", "results/qs", "--out", str(out)]) == 0
    )
    document = json.loads(out.read_text())
    assert document == json.loads(json.dumps(ex.membership(config, "results/qs")))
    assert document["config_name"] == "quickstart" and len(document["runs"]) == 27
    assert document["experiments"]["E2"]["runs"] == document["experiments"]["E1"]["runs"]


def test_check_store_cli(tmp_path, capsys):
    import json

    from backdoor_eval.cli import main

    (tmp_path / "manifest.json").write_text(json.dumps({"class_names": ["daisy", "rose"]}))
    assert main(["check-store", "--store", str(tmp_path), "--classes", '["daisy", "rose"]']) == 0
    assert main(["check-store", "--store", str(tmp_path), "--classes", "rose,daisy"]) == 2
    assert "has classes ['daisy', 'rose']; the config declares ['rose', 'daisy']" in capsys.readouterr().err


def test_device_cuda_without_a_gpu_is_a_warning_before_any_job(tmp_path):
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here: nothing to warn about")
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config["device"] = "cuda"
    path = tmp_path / "cuda.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "device: cuda, but no GPU is visible here" in result.stdout + result.stderr


def test_a_run_that_would_poison_no_image_fails_the_dry_run(tmp_path):
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    config["experiments"]["E5"]["poison_rate"] = [0.1, 0.001]
    path = tmp_path / "zero.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode != 0
    message = result.stdout + result.stderr
    assert "experiments.E5.poison_rate: dataset " in message
    assert "poison_rate=0.001 x " in message and "rounds down to 0 poisoned images" in message
    assert "Job stats" not in message  # rejected before the DAG was built


@pytest.mark.slow
def test_a_diverged_run_fails_its_job_and_never_becomes_a_row(tmp_path):
    import pandas as pd

    config = slice_config()
    config["models"]["small_cnn_hot"] = {**config["models"]["small_cnn"], "train": {"lr": 1.0e30}}
    config["experiments"]["E1"].update(model=["small_cnn", "small_cnn_hot"], trigger="bs")
    config["outputs"] = {"table2": "E1"}
    config_file = tmp_path / "nan.yaml"
    config_file.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(config_file), "--cores", "2", "--keep-going", workdir=tmp_path)
    assert result.returncode != 0
    results = tmp_path / "results" / "slice"
    hot = "synthetic/small_cnn_hot/bs/a1.0/many-to-one/tclass0/sall/r0.1/none/seed0"
    log = (results / "logs" / "train" / f"{hot}.log").read_text()
    assert "training diverged in the poison phase" in log and "lower the learning rate (now 1e+30" in log
    assert not (results / "runs" / hot / "poison" / "final.json").exists()
    assert (results / "runs" / hot.replace("_hot", "") / "poison" / "final.json").is_file()  # the other run finished
    assert not (results / "runs.parquet").exists()  # no table is built on a failed run

    # Without the diverged model, the finished run is reused and is the only row.
    config["models"].pop("small_cnn_hot")
    config["experiments"]["E1"]["model"] = "small_cnn"
    config_file.write_text(yaml.safe_dump(config))
    again = snakemake("--configfile", str(config_file), "--cores", "2", workdir=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "rule train:" not in again.stdout + again.stderr
    runs = pd.read_parquet(results / "runs.parquet")
    assert runs["model"].tolist() == ["small_cnn"]


def _set(path: str, value):
    """A config mutation: set the dotted ``path`` (list indices as numbers) to ``value``."""

    def mutate(config: dict) -> None:
        *parents, last = path.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node.setdefault(key, {})
        node[last] = value

    return mutate


# Config mistakes the dry run must reject before any job, each with the key it must name.
BROKEN_CONFIGS = {
    "model arch": ([_set("models.small_cnn.arch", "resnet5O")], "models.small_cnn.arch: 'resnet5O' is not registered"),
    "dataset kind": ([_set("datasets.synthetic.kind", "synthetc")], "datasets.synthetic.kind: 'synthetc' is not regis"),
    "trigger kind": (
        [_set("triggers.bz", {"kind": "bz"}), _set("experiments.E1.trigger", ["bs", "bz"])],
        "triggers.bz.kind: 'bz' is not registered",
    ),
    "regularizer": (
        [_set("regularizers.mixupp", {}), _set("experiments.E3.regularizer", ["none", "mixupp"])],
        "regularizers.mixupp: 'mixupp' is not registered",
    ),
    "optimizer": (
        [_set("train.optimizer", "adamx")],
        "train.optimizer: unknown optimizer 'adamx'; registered optimizers:",
    ),
    "per-model optimizer": (
        [_set("models.small_cnn.train", {"optimizer": "adamx"})],
        "models.small_cnn.train.optimizer: unknown optimizer 'adamx'",
    ),
    "unknown train key": ([_set("train.lrate", 0.1)], "train.lrate: unknown key; allowed: amp,"),
    "lr read as text": ([_set("train.lr", "3e-3")], "train.lr: '3e-3' is not valid; allowed: number (YAML reads"),
    "output naming no experiment": ([_set("outputs.table2", "E1+E9")], "outputs.table2: experiment 'E9' is not def"),
    "empty factor list": ([_set("experiments.E1.trigger", [])], "experiments.E1.trigger: [] is not valid; allowed:"),
    "unknown poison class": (
        [_set("experiments.E1.poison_class", ["class0", "class12"])],
        "experiments.E1.poison_class[1]: 'class12' is not a class of dataset synthetic",
    ),
    "source is the poison class": (
        [_set("experiments.E6.source", "class0")],
        "experiments.E6.source: 'class0' is the poison class",
    ),
    "undeclared model": ([_set("experiments.E1.model", "resnet50")], "experiments.E1.model: 'resnet50' is not decl"),
    "poison rate 1": ([_set("experiments.E5.poison_rate", [0.1, 1.0])], "experiments.E5.poison_rate[1]: 1.0 is out"),
    "device": ([_set("device", "tpu")], "device: 'tpu' is not valid; allowed: auto, cpu, cuda"),
    # Every parameter of every registry entry, checked as its job would build it (issue: they failed in the job).
    "model param unknown": ([_set("models.small_cnn.params.evil", 1)], "models.small_cnn.params.evil: "),
    "model width 0": ([_set("models.small_cnn.params.width", 0)], "models.small_cnn.params.width: width=0 is invalid"),
    "trigger param unknown": (
        [_set("triggers.bs.params", {"radius": 3})],
        "triggers.bs.params.radius: trigger 'bs' has no parameter 'radius'; allowed: alpha, size, offset",
    ),
    "regularizer param": ([_set("regularizers.contrastive.margin", -1)], "regularizers.contrastive.margin: "),
    "dataset param unknown": (
        [_set("datasets.synthetic.params.colour", "red")],
        "datasets.synthetic.params.colour: dataset 'synthetic' has no parameter 'colour'",
    ),
    "dataset too big for memory": (
        [_set("datasets.synthetic.params.size", 20000)],
        "datasets.synthetic.params: making this dataset needs about",
    ),
    "negative seed": ([_set("experiments.E1.seed", -1)], "experiments.E1.seed: -1 is not valid"),
    "poison class without a poison_val image": (
        [_set("datasets.synthetic.params.per_class", 6)],  # 6 images: 0 of class0 in poison_val
        "experiments.E1.poison_class: dataset synthetic: class 'class0' has no image in the poison_val set (6 images",
    ),
    "no job per GPU": ([_set("jobs_per_gpu", 0)], "jobs_per_gpu: 0 is not valid; less than the minimum of 1"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BROKEN_CONFIGS))
def test_dry_run_rejects_a_broken_config_naming_the_key(tmp_path, case):
    mutations, message = BROKEN_CONFIGS[case]
    config = yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text())
    for mutate in mutations:
        mutate(config)
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(config))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Job stats" not in result.stdout + result.stderr and not (tmp_path / "results").exists()


def test_a_yaml_syntax_error_is_named_with_file_and_line_by_show_config(tmp_path):
    # Snakemake parses --configfile itself, before the workflow starts, and drops the parser's line
    # ("Config file is not valid JSON or YAML"); the package's loader names the file, line and column.
    path = tmp_path / "broken.yaml"
    path.write_text((REPO / "config" / "quickstart.yaml").read_text().replace("lr: 3.0e-3", "lr: [3.0e-3"))
    result = snakemake("--configfile", str(path), "-n", workdir=tmp_path)
    assert result.returncode != 0 and "Config file is not valid JSON or YAML" in result.stdout + result.stderr
    shown = subprocess.run(
        [str(BIN / "backdoor-eval"), "show-config", "--config", str(path)], capture_output=True, text=True, env=env()
    )
    assert shown.returncode == 2
    assert re.search(rf"config {re.escape(str(path))}, line \d+, column \d+: YAML syntax error", shown.stderr)


# --------------------------------------------------------------------------- a hard kill of Snakemake


def killed_slice_config() -> dict:
    """One run of a tiny synthetic set, trained long enough (no early stop) to be killed mid-training."""
    config = copy.deepcopy(yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text()))
    config["name"] = "killed"
    config["gpu_lock_dir"] = None
    config["datasets"]["synthetic"]["params"] = {"num_classes": 3, "per_class": 100, "size": 16, "seed": 0}
    config["datasets"]["synthetic"]["classes"] = ["class0", "class1", "class2"]
    config["train"].update(max_epochs=30, patience=30, checkpoint_every_s=0)  # a checkpoint after every epoch
    config["experiments"] = {
        "E1": {
            "dataset": "synthetic",
            "model": "small_cnn",
            "trigger": "bs",
            "poison_class": "class0",
            "poison_rate": 0.3,
        }
    }
    config["outputs"] = {}
    for block in ("table1", "gallery"):
        config.pop(block, None)
    return config


def wait_for(condition, what: str, timeout: float = 120, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


@pytest.mark.slow
def test_after_a_hard_kill_a_duplicate_job_fails_on_the_lock_and_the_rerun_resumes_bit_identically(tmp_path):
    """SIGKILL Snakemake (not its jobs) mid-training: after --unlock, a rerun beside the orphaned train job
    fails on the run's lock and leaves the orphan's checkpoint alone; once the orphan is gone, a rerun
    resumes from that checkpoint and ends with exactly the metrics of an uninterrupted run."""
    import signal

    import pandas as pd
    import torch

    from backdoor_eval import locks
    from backdoor_eval.train import METRIC_COLUMNS

    config_file = tmp_path / "killed.yaml"
    config_file.write_text(yaml.safe_dump(killed_slice_config()))
    results = tmp_path / "results" / "killed"
    run_id = "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.3/none/seed0"
    checkpoint = results / "checkpoints" / run_id / "poison.pt"
    lock_file = checkpoint.with_name("poison.pt.lock")
    final = results / "runs" / run_id / "poison" / "final.json"
    train_log = results / "logs" / "train" / f"{run_id}.log"
    args = ["--configfile", str(config_file), "--cores", "2", "-p"]
    started: list[int] = []  # every Snakemake leads its own process group, which its jobs join

    def start(*extra: str, name: str) -> subprocess.Popen:
        with open(tmp_path / f"{name}.out", "w") as out:
            proc = subprocess.Popen(
                [str(SNAKEMAKE), "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), *extra],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env(),
                start_new_session=True,
            )
        started.append(proc.pid)
        return proc

    def finish(*extra: str, name: str, timeout: float = 300) -> tuple[int, str]:
        proc = start(*extra, name=name)
        try:
            code = proc.wait(timeout=timeout)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        return code, (tmp_path / f"{name}.out").read_text()

    orphan = None
    try:
        first = start(*args, name="first")
        # Mid-training: the phase's checkpoint (written under its lock after every epoch) is past epoch 2.
        wait_for(
            lambda: (
                first.poll() is not None
                or (checkpoint.exists() and torch.load(checkpoint, weights_only=True)["epoch"] >= 2)
            ),
            "a checkpoint after epoch 2",
        )
        assert first.poll() is None, (tmp_path / "first.out").read_text()[-3000:]
        orphan = locks.read_holder(lock_file)["pid"]
        # Freeze the job mid-training (it keeps its lock) for as long as the test needs it, then kill Snakemake alone.
        os.kill(orphan, signal.SIGSTOP)
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        assert not final.exists(), "training ended before the kill: raise max_epochs"
        assert locks.is_held(lock_file)
        saved = checkpoint.read_bytes()

        # (a) --unlock and rerun beside the orphan: the duplicate train job fails on the lock, touching nothing.
        code, out = finish("--unlock", *args, name="unlock")
        assert code == 0, out[-3000:]
        code, out = finish(*args, name="duplicate")
        assert code != 0
        assert "1 training phase(s) are still running in processes this Snakemake did not start" in out, out[-3000:]
        message = train_log.read_text()
        assert f"the poison phase of run results/killed/runs/{run_id} is already running in another process" in message
        assert f"pid {orphan} on host" in message and str(lock_file.relative_to(tmp_path)) in message
        assert "Wait for that process to finish, or stop it" in message
        assert checkpoint.read_bytes() == saved and not final.exists()
        assert locks.read_holder(lock_file)["pid"] == orphan and locks.is_held(lock_file)

        # (b) The orphan is killed; a rerun resumes from its checkpoint and completes.
        os.kill(orphan, signal.SIGKILL)
        wait_for(lambda: not locks.is_held(lock_file), "the killed orphan's lock to be released", timeout=30)
        resumed_after = torch.load(checkpoint, weights_only=True)["epoch"]
        code, out = finish(*args, name="rerun")
        assert code == 0, out[-3000:] + train_log.read_text()[-3000:]
        resumed = json.loads(final.read_text())
        assert resumed["resumed_from_epoch"] == resumed_after + 1 >= 3
        assert not checkpoint.exists() and not locks.is_held(lock_file) and locks.read_holder(lock_file) is None

        # The same train command, uninterrupted, into other files: the same metrics, epoch by epoch.
        command = next(line for line in out.splitlines() if line.startswith("Shell command: backdoor-eval train "))
        words = shlex.split(command.removeprefix("Shell command: ").split(" > ", 1)[0])
        reference = tmp_path / "reference"
        for option, name in (
            ("--out-model", "model.pt"),
            ("--out-epochs", "epochs.parquet"),
            ("--out-final", "final.json"),
        ):
            words[words.index(option) + 1] = str(reference / name)
        words[words.index("--checkpoint") + 1] = str(reference / "poison.pt")
        done = subprocess.run(
            [str(BIN / words[0]), *words[1:]], cwd=tmp_path, env=env(), capture_output=True, text=True
        )
        assert done.returncode == 0, done.stderr[-3000:]
        fresh = json.loads((reference / "final.json").read_text())
        assert fresh["resumed_from_epoch"] is None
        for metric in METRIC_COLUMNS:
            assert resumed[metric] == fresh[metric] or (np.isnan(resumed[metric]) and np.isnan(fresh[metric])), metric
        pd.testing.assert_frame_equal(
            pd.read_parquet(final.with_name("epochs.parquet")).drop(columns="seconds"),
            pd.read_parquet(reference / "epochs.parquet").drop(columns="seconds"),
        )
        runs = pd.read_parquet(results / "runs.parquet")
        assert list(runs["run_id"]) == [run_id]
        assert runs["adversarial_success_rate"].iloc[0] == fresh["adversarial_success_rate"]
    finally:
        if orphan is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(orphan, signal.SIGKILL)
        for group in started:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@pytest.mark.slow
def test_the_workflow_removes_what_killed_writes_left_before_its_first_job(tmp_path):
    config_file = tmp_path / "slice.yaml"
    config_file.write_text(yaml.safe_dump(slice_config()))
    results = tmp_path / "results" / "slice"
    run = results / "runs" / "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.1/none/seed0" / "poison"
    run.mkdir(parents=True)
    (run / ".model.pt.k2x9a_qz.tmp").write_bytes(bytes(300_000))  # a killed torch.save
    overlay = results / "poison" / "synthetic" / ".poisoned.3hf8s1lk.tmp"  # a killed atomic_dir
    overlay.mkdir(parents=True)
    (overlay / "overlay.npz").write_bytes(bytes(200_000))
    (results / "notes.tmp").write_text("the user's own file")  # no leading dot: not the writers' temporary
    # The cheapest real run: only the synthetic set's ingest job (a dry run does not run onstart).
    result = snakemake(
        "--configfile", str(config_file), "--cores", "1", "results/slice/data/synthetic/store", workdir=tmp_path
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "removed 2 temporary file(s) left by killed jobs (0.5 MB) under results/slice" in output
    assert output.index("removed 2 temporary file(s)") < output.index("rule ingest:")  # before the first job
    assert not (run / ".model.pt.k2x9a_qz.tmp").exists() and not overlay.exists()
    assert (results / "notes.tmp").read_text() == "the user's own file"
    assert (results / "data" / "synthetic" / "store" / "manifest.json").is_file()


def test_the_membership_job_of_a_grid_over_a_declared_factor(tmp_path):
    """The membership job's config (a part of the whole) carries every factor's section: an optimizer
    grid, the one config/real-cifar10-optimizer.yaml runs, writes its membership through the workflow."""
    import json

    config_file = REPO / "config" / "real-cifar10-optimizer.yaml"
    done = snakemake(
        "--configfile",
        str(config_file),
        "--cores",
        "1",
        "results/real-cifar10-optimizer/membership.json",
        workdir=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    document = json.loads((tmp_path / "results/real-cifar10-optimizer/membership.json").read_text())
    config = yaml.safe_load(config_file.read_text())
    assert document == json.loads(json.dumps(ex.membership(config, "results/real-cifar10-optimizer")))
    assert len(document["runs"]) == 18
    assert sorted({run.rsplit("/opt-", 1)[1] for run in document["runs"]}) == ["adam", "adamw", "sgd"]
