"""Training and inference cost of every model at full-MIMIC-IV scale, extrapolated.

    # the cohort: `leader synth` at 94,000 patients -> 157,093 visits -> 125,683 training
    # samples (every visit a sample), about the full MIMIC-IV's 126 k
    .venv/bin/python benchmarks/scale.py --make-cohort 94000 --dataset data/synth-94k
    .venv/bin/python benchmarks/scale.py --dataset data/synth-94k --jobs 2 --out runs/scale

Running every model for its whole budget at that size would take hours (the neural
baselines' 30 epochs, the student's 100). Instead each model is trained for ONE epoch on a
random subset of the training patients (``--train-samples``, 4,096 by default; validation
and test cut the same way) and scored on ``--test-samples`` test samples, each in its own
process with one torch thread. Cost is measured in CPU-seconds (``time.process_time``), not
wall time: the machine is shared, and CPU-seconds depend much less on the neighbours. The
table then extrapolates linearly: CPU-seconds per training sample x the full training set
= one full epoch; x the model's epoch budget = its whole training; the same for inference
over the full test split. Linear is right for the per-sample neural models; for LR / ECC
(one solver per drug) it is an approximation. ``--jobs K`` runs K models at once; the
progress line gives an ETA from the models finished so far.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

MODELS = (
    "popularity",
    "previous_visit",
    "lr",
    "ecc",
    "retain",
    "leap",
    "gamenet",
    "safedrug",
    "micron",
    "cognet",
    "molerec",
    "leader_s",
)


def make_cohort(patients: int, out: Path, seed: int = 0) -> None:
    """`leader synth --patients N` then `leader prepare events`, into ``out``."""
    from leader.data.prepare import prepare_events
    from leader.data.synthetic import generate, write

    raw = write(generate(patients=patients, seed=seed), out.parent / f"{out.name}-raw")
    dataset = prepare_events(
        raw / "events.csv", out, profiles=raw / "profiles.csv", ddi=raw / "ddi.csv"
    )
    print(f"cohort {out}: {dataset.stats['patients']} patients, {dataset.stats['visits']} visits")


def subset(dataset: Any, targets: dict[str, int], seed: int) -> Any:
    """The same vocabulary with a random subset of each split's patients (~target samples)."""
    from leader.data.store import VisitDataset

    rng = np.random.default_rng(seed)
    per_patient = dataset.visits.groupby("patient_id").size()
    splits: dict[str, list[str]] = {}
    for split, target in targets.items():
        patients = list(dataset.splits[split])
        chosen, samples = [], 0
        for i in rng.permutation(len(patients)):
            if samples >= target:
                break
            chosen.append(patients[i])
            samples += int(per_patient.get(patients[i], 0))
        splits[split] = sorted(chosen)
    keep = {p for ps in splits.values() for p in ps}
    return VisitDataset(
        visits=dataset.visits[dataset.visits["patient_id"].isin(keep)].reset_index(drop=True),
        profiles=dataset.profiles[dataset.profiles["patient_id"].isin(keep)].reset_index(drop=True),
        vocab=dataset.vocab,
        splits=splits,
        ddi_pairs=dataset.ddi_pairs,
        ddi_source=dataset.ddi_source,
        stats=dataset.stats,
        manifest=dataset.manifest,
    )


def time_model(name: str, subset_dir: str, options: dict[str, Any]) -> dict[str, Any]:
    """One model in a fresh process: fit for one epoch, then predict the test samples."""
    import torch

    from leader.data.store import VisitDataset

    torch.set_num_threads(1)
    dataset = VisitDataset.load(subset_dir)
    test = dataset.samples("test")
    wall, cpu = time.perf_counter(), time.process_time()
    from leader.baselines.registry import create, default_config

    overrides: dict[str, Any] = {"epochs": 1, "seed": 0, "threads": 1}
    if name == "leader_s":
        overrides["batch_size"] = options["student_batch"]
    if options.get("smiles"):
        overrides.update(smiles=options["smiles"], allow_missing_molecules=True)
    model = create(name, **overrides)  # nested configs too: epochs reaches train.epochs
    model.fit(dataset, log=lambda _: None)
    train_cpu = time.process_time() - cpu
    config = default_config(name)
    epochs = getattr(config, "epochs", None) or getattr(
        getattr(config, "train", None), "epochs", None
    )
    train_wall = time.perf_counter() - wall
    cpu = time.process_time()
    model.predict_proba(test)
    infer_cpu = time.process_time() - cpu
    return {
        "model": name,
        "train_samples": len(dataset.samples("train")),
        "train_cpu_s": round(train_cpu, 3),
        "train_wall_s": round(train_wall, 3),
        "epochs_budget": epochs,
        "test_samples": len(test),
        "infer_cpu_s": round(infer_cpu, 4),
    }


def extrapolate(row: dict[str, Any], full_train: int, full_test: int) -> dict[str, Any]:
    per_sample = row["train_cpu_s"] / max(row["train_samples"], 1)
    epoch = per_sample * full_train
    budget = row["epochs_budget"] or 1
    infer_rate = row["test_samples"] / max(row["infer_cpu_s"], 1e-9)
    return {
        **row,
        "train_samples_per_cpu_s": round(1 / max(per_sample, 1e-12), 1),
        "full_epoch_cpu_s": round(epoch, 1),
        "full_budget_cpu_h": round(epoch * budget / 3600, 2),
        "infer_samples_per_cpu_s": round(infer_rate, 1),
        "full_test_infer_cpu_s": round(full_test / infer_rate, 2),
    }


def markdown(rows: list[dict[str, Any]], full_train: int, full_test: int) -> str:
    lines = [
        f"Extrapolated to {full_train:,} training and {full_test:,} test samples "
        "(CPU-seconds on one thread; one epoch timed on a subset, see benchmarks/scale.py).",
        "",
        "| model | train samples / CPU-s | one full epoch (CPU-s) | epochs (budget) "
        "| full training (CPU-h) | inference samples / CPU-s | full test set (CPU-s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | failed: {r['error']} | | | | | |")
            continue
        lines.append(
            f"| {r['model']} | {r['train_samples_per_cpu_s']:,.0f} | {r['full_epoch_cpu_s']:,.0f} "
            f"| {r['epochs_budget'] or '-'} | {r['full_budget_cpu_h']:,.2f} "
            f"| {r['infer_samples_per_cpu_s']:,.0f} | {r['full_test_infer_cpu_s']:,.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, required=True, help="prepared full-size cohort")
    parser.add_argument("--make-cohort", type=int, default=0, metavar="PATIENTS")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--train-samples", type=int, default=4096)
    parser.add_argument("--test-samples", type=int, default=2048)
    parser.add_argument("--student-batch", type=int, default=16)
    parser.add_argument("--smiles", default=None, help="atc3,smiles CSV for SafeDrug / MoleRec")
    parser.add_argument("--jobs", type=int, default=1, help="models timed in parallel")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="folder for scale.{md,json}")
    args = parser.parse_args()
    if args.make_cohort:
        make_cohort(args.make_cohort, args.dataset, args.seed)
    from leader.data.store import VisitDataset

    full = VisitDataset.load(args.dataset)
    full_train, full_test = len(full.samples("train")), len(full.samples("test"))
    targets = {"train": args.train_samples, "val": 256, "test": args.test_samples}
    options = {"student_batch": args.student_batch, "smiles": args.smiles}
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        subset_dir = str(Path(tmp) / "subset")
        subset(full, targets, args.seed).save(subset_dir)
        context = get_context("spawn")  # fresh interpreters: no shared torch state
        with ProcessPoolExecutor(max_workers=args.jobs, mp_context=context) as pool:
            futures = {pool.submit(time_model, m, subset_dir, options): m for m in args.models}
            for done, future in enumerate(as_completed(futures), start=1):
                name = futures[future]
                try:
                    row = extrapolate(future.result(), full_train, full_test)
                    note = f"train {row['train_samples_per_cpu_s']:,.0f} samples/CPU-s"
                except Exception as exc:  # a model that fails is reported, the rest go on
                    row = {"model": name, "error": f"{type(exc).__name__}: {exc}"[:200]}
                    note = "failed"
                rows.append(row)
                elapsed = time.perf_counter() - started
                eta = elapsed / done * (len(futures) - done)
                print(
                    f"[{done}/{len(futures)}] {name}: {note}; elapsed {elapsed:.0f} s, "
                    f"ETA {eta:.0f} s (from the models done so far)",
                    file=sys.stderr,
                    flush=True,
                )
    rows.sort(key=lambda r: args.models.index(r["model"]))
    table = markdown(rows, full_train, full_test)
    print(table)
    if args.out is not None:
        from leader.data.store import write_json_atomic

        args.out.mkdir(parents=True, exist_ok=True)
        meta = {"full_train": full_train, "full_test": full_test, "cpu_count": os.cpu_count()}
        write_json_atomic(args.out / "scale.json", {**meta, **vars_json(args), "rows": rows})
        (args.out / "scale.md").write_text(table + "\n", encoding="utf-8")


def vars_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


if __name__ == "__main__":
    main()
