"""The tables committed under docs/results/ are what the table commands write from the committed Parquet.

docs/results.md quotes the published tables and says every one of them was written by the workflow;
these tests rebuild each one from its folder's runs.parquet (detections.parquet, defenses.parquet) with
the same command and experiments the workflow's rule uses, and compare the text. A table edited by hand,
or left stale after its Parquet was replaced, fails here. Table 1 is left out: it reads the image store,
which is not committed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from backdoor_eval import configview, names
from backdoor_eval.analyses import plan as analysis_plan
from backdoor_eval.cli import main as cli
from backdoor_eval.config import load_config

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = REPO / "docs" / "results"


def published_tables():
    """(config name, table name) for every published table whose config is in config/."""
    cases = []
    for folder in sorted(path for path in PUBLISHED.iterdir() if path.is_dir()):
        if not (REPO / "config" / f"{folder.name}.yaml").is_file():
            continue
        for table in sorted((folder / "tables").glob("*.md")):
            if table.stem != "table1" and not table.stem.endswith("_n"):
                cases.append((folder.name, table.stem))
    return cases


def rebuild_command(name: str, table: str, out: Path) -> list[str]:
    folder = PUBLISHED / name
    runs = ["--runs", str(folder / "runs.parquet")]
    written = ["--out-csv", str(out / f"{table}.csv"), "--out-md", str(out / f"{table}.md")]
    if table == analysis_plan.DETECTION_TABLE:
        return ["detection-table", "--detections", str(folder / "detections.parquet"), *written]
    if table == analysis_plan.DEFENSE_TABLE:
        return ["defense-table", "--defenses", str(folder / "defenses.parquet"), *runs, *written]
    config = load_config(REPO / "config" / f"{name}.yaml", check_registries=False)
    outputs = configview.outputs(config)
    assert table in outputs, f"{name}: table {table} is published but the config builds no such table"
    if table in names.EPOCH_OUTPUTS:
        epochs = ["--epochs", str(folder / "epochs.parquet")]
        figures = ["--out-png", str(out / f"{table}.png"), "--out-pdf", str(out / f"{table}.pdf")]
        return ["retraining-budget", "--experiments", "+".join(outputs[table]), *runs, *epochs, *written, *figures]
    command = ["table", "--name", table, "--experiments", "+".join(outputs[table]), *runs]
    if table in names.RETRAINING_TABLES:
        written += ["--out-counts-csv", str(out / f"{table}_n.csv"), "--out-counts-md", str(out / f"{table}_n.md")]
    return [*command, *written]


def test_the_published_folders_hold_tables():
    cases = published_tables()
    assert {name for name, _ in cases} >= {"quickstart", "real-cifar10", "real-flowers", "real-cifar10-pretrained"}
    assert ("quickstart", "detection") in cases and ("real-cifar10-pretrained", "defense") in cases


@pytest.mark.parametrize(("name", "table"), published_tables())
def test_a_published_table_is_what_its_command_writes_from_the_published_parquet(name, table, tmp_path):
    assert cli(rebuild_command(name, table, tmp_path)) == 0
    tables = PUBLISHED / name / "tables"
    for written in sorted(tmp_path.glob("*.md")):
        committed = tables / written.name
        assert written.read_text() == committed.read_text(), f"docs/results/{name}/tables/{written.name} is stale"
