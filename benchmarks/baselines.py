"""The two benchmark runs of issue 5: every model on the MIMIC-III demo and on the
synthetic cohort, each into its own results folder (results.md / .csv / .json, plots).

    .venv/bin/python benchmarks/baselines.py --data ../shared/data --out results/baselines \
        [--seeds 3] [--synth-seeds 1] [--epochs 100] [--synth-epochs 30] [--teacher-features F]

Measured on 2 shared CPU cores (2026-11-22): the demo (87 train samples) takes about 15 min
for all models x 3 seeds; the synthetic cohort (2,000 patients) about 45 min per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leader.benchmark import BenchmarkConfig, run_benchmark
from leader.data.prepare import prepare_events, prepare_mimic3
from leader.data.synthetic import generate, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="all")
    parser.add_argument("--seeds", type=int, default=3, help="seeds on the MIMIC-III demo")
    parser.add_argument("--synth-seeds", type=int, default=1, help="seeds on the synthetic cohort")
    parser.add_argument("--epochs", type=int, default=100, help="epoch cap on the demo")
    parser.add_argument("--synth-epochs", type=int, default=30, help="epoch cap on the cohort")
    parser.add_argument("--teacher-features", default=None, help="LEADER(T) file for the demo")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    resources = args.data / "resources"
    smiles = str(resources / "atc3_smiles.csv")

    demo = args.out / "data" / "mimic3-demo"
    if not demo.exists():
        prepare_mimic3(
            args.data / "mimic-iii-demo", resources, demo,
            ddi=resources / "ddi_atc3_pairs.csv",
            atc_names=resources / "atc_names_who_2021-12-03.csv",
        )  # fmt: skip
    synth = args.out / "data" / "synth"
    if not synth.exists():
        raw = write(generate(patients=2000, seed=0), args.out / "data" / "synth-raw")
        prepare_events(
            raw / "events.csv", synth, profiles=raw / "profiles.csv", ddi=raw / "ddi.csv"
        )

    runs = [
        (demo, args.seeds, args.epochs, args.teacher_features),
        (synth, args.synth_seeds, args.synth_epochs, None),
    ]
    for dataset, seeds, epochs, teacher in runs:
        config = BenchmarkConfig(
            models=[args.models], seeds=seeds, epochs=epochs, smiles=smiles,
            allow_missing_molecules=True, teacher_features=teacher, threads=args.threads,
            resume=True,
        )  # fmt: skip
        run_benchmark(dataset, args.out / f"benchmark-{dataset.name}", config)
        print(f"results: {args.out / f'benchmark-{dataset.name}' / 'results.md'}")


if __name__ == "__main__":
    main()
