"""Wall-clock time of the whole benchmark a user runs first: every model, one seed, on the
MIMIC-III demo (issue 23: at most 10 minutes on 2 cores).

    .venv/bin/python benchmarks/benchmark_wall.py \
        --mimic3 ../shared/data/mimic-iii-demo --resources ../shared/data/resources
    .venv/bin/python benchmarks/benchmark_wall.py --dataset data/mimic3-demo --workers 1

Prepares the demo cohort as the README does (`leader prepare mimic3 ... --ddi
ddi_atc3_pairs.csv --atc-names ...`, skipped with ``--dataset``), then times
``leader benchmark --models all --seeds 1 --workers N`` (default 2, one per core; every
model on one torch thread) in a fresh process, as a user runs it. Prints the total wall
time, the CPU time of the command and its workers, the machine's load average before and
after (neighbours slow it down: on a shared machine the figure is pessimistic), and each
model's wall / CPU seconds, best epoch and epochs run from the results.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def prepare(mimic3: Path, resources: Path, out: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "leader", "prepare", "mimic3", "--data", str(mimic3),
         "--resources", str(resources), "--ddi", str(resources / "ddi_atc3_pairs.csv"),
         "--atc-names", str(resources / "atc_names_who_2021-12-03.csv"), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, help="a prepared dataset (skips preparing)")
    parser.add_argument("--mimic3", type=Path, help="MIMIC-III demo tables")
    parser.add_argument("--resources", type=Path, help="../shared/data/resources")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--models", default="all")
    parser.add_argument("--out", type=Path, help="results folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="benchmark-wall-"))
    dataset = args.dataset
    if dataset is None:
        if args.mimic3 is None or args.resources is None:
            parser.error("give --dataset, or --mimic3 and --resources to prepare the demo")
        dataset = work / "mimic3-demo"
        prepare(args.mimic3, args.resources, dataset)
    out = args.out or work / "results"
    load_before = os.getloadavg()
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "leader", "benchmark", "--dataset", str(dataset), "--models",
         args.models, "--seeds", "1", "--workers", str(args.workers), "--out", str(out)],
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    wall = time.perf_counter() - started
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_after = os.getloadavg()
    print(
        f"leader benchmark --models {args.models} --seeds 1 --workers {args.workers}: "
        f"{wall:.0f} s wall ({wall / 60:.1f} min), "
        f"{children.ru_utime + children.ru_stime:.0f} CPU-s (command and workers); "
        f"{os.cpu_count()} cores; load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    print(f"{'model':<16}{'status':<9}{'wall s':>8}{'CPU s':>8}{'best epoch':>12}{'epochs':>8}")
    for run in results["runs"]:
        cells = [run.get(k) for k in ("wall_seconds", "cpu_seconds", "best_epoch", "epochs_run")]
        shown = ["-" if c is None else f"{c:.0f}" for c in cells]
        print(f"{run['model']:<16}{run['status']:<9}{shown[0]:>8}{shown[1]:>8}"
              f"{shown[2]:>12}{shown[3]:>8}")  # fmt: skip
    print(f"results: {out}/results.md")


if __name__ == "__main__":
    main()
