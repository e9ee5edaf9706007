"""The two benchmark runs of issues 5 and 13: every model on the MIMIC-III demo (5-fold
cross-validation by patient, the README's table) and on the synthetic cohort (its own
split), each into its own results folder (results.md / .csv / .json, plots).

    .venv/bin/python benchmarks/baselines.py --data ../shared/data --out results/baselines \
        [--seeds 1] [--folds 5] [--synth-seeds 1] [--synth-epochs 30] [--teacher-features F]

The demo is prepared with its molecules (the shipped atc3_smiles.csv, found because its
drugs are ATC3 classes), so SafeDrug and MoleRec run without --smiles. LEADER(T) is scored
only on the synthetic cohort's own split when --teacher-features is given (features belong
to one split, folds re-split). Measured on 2 shared CPU cores (2026-12-03): the demo, all
models x 5 folds x 1 seed, see the README; the synthetic cohort (2,000 patients) about
45 min per seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from leader.benchmark import BenchmarkConfig, run_benchmark
from leader.cli.data import read_smiles_table
from leader.data.prepare import prepare_events, prepare_mimic3
from leader.data.store import VisitDataset
from leader.data.synthetic import generate, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared data folder")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--models", default="all")
    parser.add_argument("--seeds", type=int, default=1, help="seeds on the MIMIC-III demo")
    parser.add_argument("--folds", type=int, default=5, help="folds on the MIMIC-III demo")
    parser.add_argument("--synth-seeds", type=int, default=1, help="seeds on the synthetic cohort")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap on the demo")
    parser.add_argument("--synth-epochs", type=int, default=30, help="epoch cap on the cohort")
    parser.add_argument("--teacher-features", default=None, help="LEADER(T) file (synthetic)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="models trained at once")
    parser.add_argument("--average", default="sample", help="sample or patient")
    args = parser.parse_args()
    resources = args.data / "resources"

    demo = args.out / "data" / "mimic3-demo"
    if not demo.exists():
        prepare_mimic3(
            args.data / "mimic-iii-demo", resources, demo,
            ddi=resources / "ddi_atc3_pairs.csv",
            atc_names=resources / "atc_names_who_2021-12-03.csv",
        )  # fmt: skip
        prepared = VisitDataset.load(demo)  # the molecules `leader prepare mimic3` records
        prepared.set_molecules(read_smiles_table(resources / "atc3_smiles.csv"),
                              str(resources / "atc3_smiles.csv"))  # fmt: skip
    synth = args.out / "data" / "synth"
    if not synth.exists():
        raw = write(generate(patients=2000, seed=0), args.out / "data" / "synth-raw")
        prepare_events(
            raw / "events.csv", synth, profiles=raw / "profiles.csv", ddi=raw / "ddi.csv"
        )

    runs = [
        (demo, args.seeds, args.folds, args.epochs, None),
        (synth, args.synth_seeds, 0, args.synth_epochs, args.teacher_features),
    ]
    for dataset, seeds, folds, epochs, teacher in runs:
        config = BenchmarkConfig(
            models=[args.models], seeds=seeds, folds=folds, epochs=epochs,
            teacher_features=teacher, threads=args.threads, resume=True,
            workers=args.workers, average=args.average,
        )  # fmt: skip
        run_benchmark(dataset, args.out / f"benchmark-{dataset.name}", config)
        print(f"results: {args.out / f'benchmark-{dataset.name}' / 'results.md'}")


if __name__ == "__main__":
    main()
