"""Speed and memory of `leader prepare mimic3` on the MIMIC-III demo replicated N times.

Each copy gets fresh subject / admission ids, so N=100 gives 12,900 admissions and about
a million prescription rows. Prints wall time and peak memory (max RSS of the child) per N.

    .venv/bin/python benchmarks/prepare.py --copies 10 100 --repeats 3

Target (issue 2): under 3 s and under 2 GiB at N=100, time linear in N.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

TABLES = ("ADMISSIONS", "PATIENTS", "DIAGNOSES_ICD", "PROCEDURES_ICD", "PRESCRIPTIONS")


def replicate(demo: Path, copies: int, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        frame = pd.read_csv(demo / f"{name}.csv", dtype=str)
        parts = []
        for copy in range(copies):
            part = frame.copy()
            for column in ("subject_id", "hadm_id"):
                if column in part.columns:
                    ids = pd.to_numeric(part[column], errors="coerce")
                    part[column] = (ids + copy * 10_000_000).astype("Int64").astype(str)
            parts.append(part)
        pd.concat(parts, ignore_index=True).to_csv(out / f"{name}.csv", index=False)
    for name in ("D_ICD_DIAGNOSES", "D_ICD_PROCEDURES"):
        (out / f"{name}.csv").write_bytes((demo / f"{name}.csv").read_bytes())


def run_once(data: Path, resources: Path, out: Path) -> tuple[float, float]:
    command = [
        sys.executable,
        "-m",
        "leader",
        "prepare",
        "mimic3",
        "--data",
        str(data),
        "--resources",
        str(resources),
        "--ddi",
        str(resources / "ddi_atc3_pairs.csv"),
        "--out",
        str(out),
    ]
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return seconds, max(peak, before) / 1024  # KiB -> MiB (max over children so far)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = os.environ.get("LEADER_TEST_DATA", str(Path(__file__).parents[2] / "shared/data"))
    parser.add_argument("--data", type=Path, default=Path(default))
    parser.add_argument("--copies", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"{'N':>5} {'admissions':>10} {'rx rows':>9} {'median s':>9} {'peak MiB':>9}")
    for copies in sorted(args.copies):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp) / "mimic"
            replicate(args.data / "mimic-iii-demo", copies, data)
            rows = sum(1 for _ in (data / "PRESCRIPTIONS.csv").open()) - 1
            results = [
                run_once(data, args.data / "resources", Path(tmp) / f"out{i}")
                for i in range(args.repeats)
            ]
            seconds = statistics.median(r[0] for r in results)
            # Each copy runs in a fresh child: a separate process per N gives its own peak.
            print(
                f"{copies:>5} {129 * copies:>10} {rows:>9} {seconds:>9.2f} "
                f"{max(r[1] for r in results):>9.0f}"
            )


if __name__ == "__main__":
    main()
