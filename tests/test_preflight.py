"""What the workflow checks and tidies before any job (backdoor_eval.preflight), without running Snakemake."""

from __future__ import annotations

import copy
import multiprocessing
from pathlib import Path

import pytest
import yaml

from backdoor_eval import experiments, preflight
from backdoor_eval.layout import Layout
from backdoor_eval.locks import hold

REPO = Path(__file__).resolve().parents[1]
RUN_ID = "synthetic/small_cnn/bs/a1.0/many-to-one/tclass0/sall/r0.3/none/seed0"


@pytest.fixture
def quickstart() -> dict:
    from backdoor_eval.config import prepare_config

    return prepare_config(yaml.safe_load((REPO / "config" / "quickstart.yaml").read_text()), check_registries=False)


def test_cuda_is_a_warning_only_where_no_gpu_is_visible():
    assert "no GPU is visible here" in preflight.cuda_warning("cuda", cuda_available=False)
    assert preflight.cuda_warning("cuda", cuda_available=True) is None
    assert preflight.cuda_warning("auto", cuda_available=False) is None


def test_a_run_poisoning_no_image_is_named_before_any_job(quickstart, tmp_path):
    layout = Layout(str(tmp_path / "results" / "quickstart"))
    assert preflight.known_class_counts(quickstart, layout) == {"synthetic": [200] * 10}
    preflight.check_poison_counts(quickstart, layout, experiments.expand(quickstart))
    config = copy.deepcopy(quickstart)
    config["experiments"]["E5"]["poison_rate"] = [0.001]
    with pytest.raises(ValueError, match=r"^experiments\.E5\.poison_rate: dataset synthetic: poison_rate=0\.001"):
        preflight.check_poison_counts(config, layout, experiments.expand(config))


def test_retraining_a_run_whose_model_was_deleted_is_announced(tmp_path):
    layout = Layout(str(tmp_path))
    assert preflight.retraining_warning(layout, [RUN_ID]) is None  # never trained: nothing to say
    final = Path(layout.phase_file("poison", "final", RUN_ID))
    final.parent.mkdir(parents=True)
    final.write_text("{}")
    message = preflight.retraining_warning(layout, [RUN_ID])
    assert message.startswith("1 finished poison phase(s) will be trained again") and RUN_ID in message
    Path(layout.phase_file("poison", "model", RUN_ID)).write_text("kept")  # keep_models: true
    assert preflight.retraining_warning(layout, [RUN_ID]) is None


def _hold(lock_file, started, release):
    with hold(lock_file, "the poison phase"):
        started.set()
        release.wait(30)


def test_start_removes_killed_writes_but_not_those_of_a_phase_running_elsewhere(tmp_path):
    layout = Layout(str(tmp_path))
    stale = tmp_path / "runs" / "other" / ".model.pt.abc123.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x" * 1000)
    busy = Path(layout.checkpoint_root) / RUN_ID
    busy.mkdir(parents=True)
    busy_tmp = busy / ".poison.pt.def456.tmp"
    busy_tmp.write_bytes(b"y")
    context = multiprocessing.get_context("spawn")
    started, release = context.Event(), context.Event()
    process = context.Process(target=_hold, args=(str(busy / "poison.pt.lock"), started, release))
    process.start()
    try:
        assert started.wait(30)
        assert [(run_id, phase) for run_id, phase, _ in preflight.phases_running_elsewhere(layout)] == [
            (RUN_ID, "poison")
        ]
        messages = preflight.clean_up(layout)
    finally:
        release.set()
        process.join(30)
    levels = [level for level, _ in messages]
    assert levels == ["warning", "info"]
    assert "still running in processes this Snakemake did not start" in messages[0][1]
    assert messages[1][1].startswith("removed 1 temporary file(s) left by killed jobs (0.0 MB)")
    assert not stale.exists() and busy_tmp.exists()
    assert preflight.clean_up(layout) == [
        ("info", f"removed 1 temporary file(s) left by killed jobs (0.0 MB) under {tmp_path}")
    ]


def test_a_stopped_workflow_says_no_job_failed_and_a_failed_one_keeps_snakemakes_report():
    stopped = (
        "Will exit after finishing currently running jobs (scheduler).\nShutting down, this might take some time.\n"
    )
    message = preflight.interrupted_message(stopped)
    assert message.startswith("No job failed: the workflow was stopped (SIGTERM or Ctrl-C)")
    assert "run the same command again" in message
    failed = stopped + "Error in rule train:\n    jobid: 3\n"
    assert preflight.interrupted_message(failed) is None
    assert preflight.interrupted_message("Error in group prep:\n") is None
