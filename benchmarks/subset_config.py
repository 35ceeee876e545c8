"""Write a copy of a config that keeps only some of its experiments.

    python benchmarks/subset_config.py CONFIG EXPERIMENT [EXPERIMENT ...] --out FILE

The copy keeps the config's name, so its runs land in the same results/<name>/ folder with the
same run ids, splits and seeds (a run's identity is its factors, not its experiment), and
runs.parquet lists only the kept experiments' runs. `outputs:` entries that name a dropped
experiment are dropped. Use it to run one part of a grid where the whole does not fit the time
at hand (benchmarks/gpu_grid.sh on a lent GPU, say).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml


def subset(config: dict, keep: list[str]) -> dict:
    experiments = config.get("experiments") or {}
    unknown = [name for name in keep if name not in experiments]
    if unknown:
        raise SystemExit(f"experiments {unknown} are not in the config; allowed: {sorted(experiments)}")
    out = dict(config)
    out["experiments"] = {name: spec for name, spec in experiments.items() if name in keep}
    outputs = {}
    for key, value in (config.get("outputs") or {}).items():
        if all(part in keep for part in str(value).split("+")):
            outputs[key] = value
    out["outputs"] = outputs
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path)
    parser.add_argument("experiments", nargs="+")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    args.out.write_text(yaml.safe_dump(subset(config, args.experiments), sort_keys=False))
    print(f"{args.out}: experiments {args.experiments} of {args.config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
