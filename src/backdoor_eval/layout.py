"""Where every result file lives: the one definition of the results folder's layout.

The Snakemake rules take their ``output:`` patterns from :class:`Layout`
(with ``{wildcard}`` placeholders), and the membership document that
``aggregate`` reads lists per-run files built by the same methods, so a
path is spelled once. Commands never choose file names: every file they
write is an argument that comes from a rule's ``{output}``.

A run's folder is ``{run}``, its run id (:attr:`backdoor_eval.factors.Run.run_id`);
a poisoned set's is :data:`backdoor_eval.factors.POISON_ID_TEMPLATE`, one
wildcard per poisoning factor. Light (no torch): the Snakefile imports it at
parse time.
"""

from __future__ import annotations

from dataclasses import dataclass

from backdoor_eval.factors import POISON_ID_TEMPLATE
from backdoor_eval.names import PHASES, fit_name

# The wildcard of a run's folders (results, checkpoints, logs): its run id.
RUN_WILDCARD = "{run}"

# Files of one training phase (train or retrain), inside {run}/{phase}/.
PHASE_FILES = {"model": "model.pt", "epochs": "epochs.parquet", "final": "final.json"}


@dataclass(frozen=True)
class Layout:
    """Path patterns under one results folder (``results/<config name>``)."""

    root: str

    # ------------------------------------------------------------------ data
    @property
    def store(self) -> str:
        return f"{self.root}/data/{{dataset}}/store"

    @property
    def partitions(self) -> str:
        return f"{self.root}/data/{{dataset}}/{{split}}/partitions.npz"

    def trigger_fit(self, kind: str) -> str:
        """A fitted trigger's fit of a split (``lv_fit.npz``; ``backdoor_eval.names.fit_name``)."""
        return f"{self.root}/data/{{dataset}}/{{split}}/{fit_name(kind)}.npz"

    @property
    def poisoned(self) -> str:
        return f"{self.root}/poison/{POISON_ID_TEMPLATE}"

    # ------------------------------------------------------------------ runs
    @property
    def run_dir(self) -> str:
        return f"{self.root}/runs/{RUN_WILDCARD}"

    def _run_folder(self, run_id: str | None) -> str:
        """The run folder pattern, or one run's folder given its ``run_id``."""
        return self.run_dir if run_id is None else f"{self.root}/runs/{run_id}"

    def phase_file(self, phase: str, name: str, run_id: str | None = None) -> str:
        """A phase's file (``model``, ``epochs`` or ``final``): a pattern, or the run's path given ``run_id``."""
        if phase not in PHASES:
            raise ValueError(f"phase {phase!r} is unknown; allowed: {', '.join(PHASES)}")
        folder = self._run_folder(run_id)
        return f"{folder}/{phase}/{PHASE_FILES[name]}"

    def run_summary(self, run_id: str | None = None) -> str:
        """The run's tidy summary (one row per phase)."""
        folder = self._run_folder(run_id)
        return f"{folder}/summary.parquet"

    def run_epochs(self, run_id: str | None = None) -> str:
        """The run's tidy per-epoch rows (both phases)."""
        folder = self._run_folder(run_id)
        return f"{folder}/epochs.parquet"

    def analysis_file(self, method: str = "{method}", extension: str = "parquet", run_id: str | None = None) -> str:
        """An analysis's result of a run (``parquet``: its row; ``npz``: its per-sample arrays), docs/detection.md."""
        folder = self._run_folder(run_id)
        return f"{folder}/analyses/{method}.{extension}"

    @property
    def checkpoint_root(self) -> str:
        """The folder of every run's checkpoints (and the phases' lock files beside them)."""
        return f"{self.root}/checkpoints"

    @property
    def checkpoints(self) -> str:
        """Resumable training state; deliberately no declared output (it must outlive a failed attempt)."""
        return f"{self.checkpoint_root}/{RUN_WILDCARD}"

    @property
    def compile_cache(self) -> str:
        """torch.compile's kernels (``TORCHINDUCTOR_CACHE_DIR``), shared by the config's jobs."""
        return f"{self.root}/compile-cache"

    # ------------------------------------------------------------------ report
    @property
    def membership(self) -> str:
        return f"{self.root}/membership.json"

    @property
    def runs_table(self) -> str:
        return f"{self.root}/runs.parquet"

    @property
    def epochs_table(self) -> str:
        return f"{self.root}/epochs.parquet"

    @property
    def analysis_membership(self) -> str:
        """Which runs each experiment analyses, with which methods, and their result files."""
        return f"{self.root}/analyses.json"

    @property
    def detections_table(self) -> str:
        return f"{self.root}/detections.parquet"

    @property
    def defenses_table(self) -> str:
        return f"{self.root}/defenses.parquet"

    @property
    def defense_epochs_table(self) -> str:
        """Every epoch of every filter-then-retrain phase (defenses.parquet holds the kept one)."""
        return f"{self.root}/defense_epochs.parquet"

    def table(self, name: str, extension: str) -> str:
        return f"{self.root}/tables/{name}.{extension}"

    def figure(self, name: str, extension: str) -> str:
        return f"{self.root}/figures/{name}.{extension}"

    # ------------------------------------------------------------------ bookkeeping
    def log(self, rule: str, pattern: str) -> str:
        return f"{self.root}/logs/{rule}/{pattern}.log"

    def benchmark(self, rule: str, pattern: str) -> str:
        return f"{self.root}/benchmarks/{rule}/{pattern}.tsv"
