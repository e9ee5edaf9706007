"""Conformal drug sets, measured: empirical miss rate and set size on test (issue 21).

For each dataset and model: the model is trained once on the train split (seed 42; neural
models with ``--epochs``), then scored on the validation and test visits. The held-out
patients (validation + test) are split at random, by patient, into a calibration half and a
test half, ``--splits`` times (seeds 0, 1, ...): on each, the conformal risk control
threshold (``leader.conformal``) is fitted on the calibration half at each alpha, and the
test half's mean miss fraction and mean set size are measured. The guarantee is on the
mean over such splits: E[miss] <= alpha. Reported: mean over splits ± its standard error
(std / sqrt(splits)), the largest single split, the mean set size and n (calibration
visits per split).

    .venv/bin/python benchmarks/conformal.py --dataset demo=data/demo \
        --dataset mimic3=data/mimic3-demo --dataset eicu=data/eicu-demo --epochs 5

Writes ``--out``/conformal.json and conformal.md (a Markdown table per dataset).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

ALPHAS = (0.05, 0.1, 0.2)
MODELS = ("leader_s", "lr", "gamenet", "popularity")


def scores(name: str, dataset: Any, epochs: int, work: Path) -> tuple[np.ndarray, float]:
    """(probabilities on validation + test visits, training seconds) of one model."""
    from leader.baselines.registry import create

    held = dataset.samples("val") + dataset.samples("test")
    started = time.perf_counter()
    if name == "leader_s":
        from leader.config import replace
        from leader.models import load
        from leader.student import StudentConfig, train_student

        config = replace(StudentConfig(), seed=42, threads=1, epochs=epochs)
        model = load(train_student(dataset.path, work / name, config, log=lambda _: None))
    else:
        model = create(name, seed=42, threads=1, epochs=epochs)
        model.fit(dataset, log=lambda _: None)  # type: ignore[call-arg]
    seconds = time.perf_counter() - started
    return np.asarray(model.predict_proba(held), dtype=np.float64), seconds


def measure(
    prob: np.ndarray,
    truth: np.ndarray,
    patients: list[str],
    alphas: tuple[float, ...],
    splits: int,
) -> list[dict[str, Any]]:
    """Per alpha: miss rate and set size over random calibration/test halves by patient."""
    from leader.conformal import miss_fraction, risk_curve

    unique = sorted(set(patients))
    rows = []
    per_alpha: dict[float, dict[str, list[float]]] = {
        a: {"miss": [], "size": [], "n": [], "full": []} for a in alphas
    }
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        chosen = set(rng.permutation(unique)[: len(unique) // 2].tolist())
        cal = np.array([p in chosen for p in patients])
        curve = risk_curve(prob[cal], truth[cal])
        for a in alphas:
            t = curve.threshold(a)
            sets = prob[~cal] >= t
            per_alpha[a]["miss"].append(float(miss_fraction(sets, truth[~cal]).mean()))
            per_alpha[a]["size"].append(float(sets.sum(axis=1).mean()))
            per_alpha[a]["n"].append(float(cal.sum()))
            per_alpha[a]["full"].append(float(t <= 0.0))
    for a in alphas:
        miss = np.asarray(per_alpha[a]["miss"])
        rows.append(
            {
                "alpha": a,
                "miss_rate": float(miss.mean()),
                "miss_rate_se": float(miss.std(ddof=1) / np.sqrt(len(miss))),
                "miss_rate_max": float(miss.max()),
                "set_size": float(np.mean(per_alpha[a]["size"])),
                "calibration_visits": float(np.mean(per_alpha[a]["n"])),
                "full_set_share": float(np.mean(per_alpha[a]["full"])),
                "within": bool(miss.mean() <= a + 2 * miss.std(ddof=1) / np.sqrt(len(miss))),
            }
        )
    return rows


def markdown(results: dict[str, Any]) -> str:
    lines = []
    for name, entry in results["datasets"].items():
        lines += [
            f"**{name}** ({entry['held_out_visits']} held-out visits of "
            f"{entry['held_out_patients']} patients; {entry['drugs']} drugs; mean "
            f"{entry['drugs_per_visit']:.1f} per visit; n = calibration visits per split)",
            "",
            "| model | alpha | miss rate (mean ± SE) | worst split | mean set size | n | "
            "full-set splits |",
            "|---|---|---|---|---|---|---|",
        ]
        for model, info in entry["models"].items():
            for row in info["rows"]:
                lines.append(
                    f"| {model} | {row['alpha']:g} | {row['miss_rate']:.4f} ± "
                    f"{row['miss_rate_se']:.4f} | {row['miss_rate_max']:.3f} | "
                    f"{row['set_size']:.1f} | {row['calibration_visits']:.0f} | "
                    f"{row['full_set_share']:.0%} |"
                )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", action="append", required=True, help="NAME=DIR")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--epochs", type=int, default=5, help="epoch limit of trained models")
    parser.add_argument("--splits", type=int, default=20, help="random calibration/test halves")
    parser.add_argument("--out", type=Path, default=Path("runs/conformal"))
    args = parser.parse_args()
    if args.splits < 5:
        parser.error("--splits: at least 5")

    import torch

    from leader.data.store import VisitDataset
    from leader.io import write_json_atomic, write_text_atomic

    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "epochs": args.epochs,
        "splits": args.splits,
        "alphas": list(ALPHAS),
        "datasets": {},
    }
    for spec in args.dataset:
        name, _, folder = spec.partition("=")
        dataset = VisitDataset.load(folder)
        held = dataset.samples("val") + dataset.samples("test")
        truth = dataset.targets(held)
        patients = [s.patient_id for s in held]
        entry: dict[str, Any] = {
            "path": folder,
            "held_out_visits": len(held),
            "held_out_patients": len(set(patients)),
            "drugs": int(truth.shape[1]),
            "drugs_per_visit": float(truth.sum(axis=1).mean()),
            "models": {},
        }
        for model in args.models.split(","):
            prob, seconds = scores(model, dataset, args.epochs, args.out / name)
            rows = measure(prob, truth, patients, ALPHAS, args.splits)
            entry["models"][model] = {"train_seconds": round(seconds, 1), "rows": rows}
            for row in rows:
                print(
                    f"{name} {model} alpha {row['alpha']}: miss {row['miss_rate']:.4f} ± "
                    f"{row['miss_rate_se']:.4f}, size {row['set_size']:.1f}, "
                    f"n {row['calibration_visits']:.0f}",
                    flush=True,
                )
        results["datasets"][name] = entry
        write_json_atomic(args.out / "conformal.json", results)
    write_text_atomic(args.out / "conformal.md", markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
