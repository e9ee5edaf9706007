"""Where the LLM should win: little data (issue 10, the paper's argument).

Trains the teacher, the student without distillation, the student distilled from that
teacher and the three control students of ``leader.controls`` (self-distillation from the
plain student of the same seed, prior soft labels, noise of the teacher's shape; each
through the same terms, settings and distillation-weight search; ``--no-controls`` leaves
them out) on
10%, 25%, 50% and 100% of the training patients (a seeded subset per seed; the same
validation and test patients), over ``--seeds``, and reports test PRAUC for the whole test
set, single-visit (first-time) and multi-visit samples apart, as a table and a plot.

    .venv/bin/python benchmarks/little_data.py --dataset leader-demo/prepare/dataset \\
        --teacher configs/teacher-demo-labels.yaml --out runs/little --seeds 42 43 44

``--teacher`` takes a teacher config (or a pipeline config's ``teacher:`` section); the
students use ``--student-config`` (default: the demo's ``student:`` section). Finished runs
are reused. Writes ``little.json``, ``little.md``, ``little.png``. Costly: one teacher per
(fraction, seed); ``--teacher-seeds 1`` trains the teacher once per fraction (seed 42's
subset) and says so in the table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import teacher_curve  # noqa: E402  (the sibling benchmark's helpers)

FRACTIONS = (0.1, 0.25, 0.5, 1.0)


def subset(dataset: Path, out: Path, fraction: float, seed: int) -> Path:
    """A copy of ``dataset`` whose train split keeps ``fraction`` of its patients."""
    if (out / "splits.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    for item in dataset.iterdir():
        if item.name != "splits.json" and item.is_file():
            shutil.copyfile(item, out / item.name)
    splits = json.loads((dataset / "splits.json").read_text(encoding="utf-8"))
    train = list(splits["train"])
    keep = max(2, round(fraction * len(train)))
    chosen = np.random.default_rng(seed).permutation(len(train))[:keep]
    splits["train"] = [train[i] for i in sorted(chosen)]
    tmp = out / ".splits.json.tmp"
    tmp.write_text(json.dumps(splits), encoding="utf-8")
    tmp.replace(out / "splits.json")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/little"))
    parser.add_argument("--student-config", type=Path, default=teacher_curve.DEMO)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--teacher-seeds", type=int, default=0, help="0 = one per seed")
    parser.add_argument("--no-controls", dest="controls", action="store_false")
    parser.add_argument("--fractions", type=float, nargs="+", default=list(FRACTIONS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="keep the frozen layers' output here: every subset reuses the same prompts' states",
    )  # fmt: skip
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from leader.data.store import VisitDataset

    rows: list[dict[str, Any]] = []
    for fraction in args.fractions:
        for index, seed in enumerate(args.seeds):
            data = subset(args.dataset, args.out / f"data-{fraction}-{seed}", fraction, seed)
            teacher_seed = seed if not args.teacher_seeds or index < args.teacher_seeds else None
            local = argparse.Namespace(
                out=args.out / f"runs-{fraction}-{seed}",
                dataset=data,
                student_config=args.student_config,
                threads=args.threads,
                cache_dir=args.cache_dir,
                controls=False,  # the controls' features are made below
            )
            row: dict[str, Any] = {"fraction": fraction, "seed": seed}
            row["plain"] = teacher_curve.student_run("plain", None, seed, local)
            if teacher_seed is not None:
                teacher = teacher_curve.train_teacher_run("teacher", args.teacher, local)
                features = Path(teacher["features"])
                row["teacher"] = teacher_curve.teacher_test(features, VisitDataset.load(data))
                row["distilled"] = teacher_curve.student_run("distilled", features, seed, local)
                if args.controls:
                    controls = teacher_curve.control_features(features, data)
                    controls["self"] = teacher_curve.self_teacher(seed, local)
                    for control in ("self", "prior", "noise"):
                        row[control] = teacher_curve.student_run(
                            control, controls[control], seed, local
                        )
            rows.append(row)
            print(json.dumps(row))
    result = {"seeds": args.seeds, "rows": rows, "table": table(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "little.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (args.out / "little.md").write_text(markdown(result["table"]), encoding="utf-8")
    plot(result["table"], args.out / "little.png")
    print(markdown(result["table"]))


def table(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        for model in NAMES:
            runs = [r[model] for r in rows if r["fraction"] == fraction and model in r]
            if not runs:
                continue
            cell: dict[str, Any] = {"fraction": fraction, "model": model, "runs": len(runs)}
            for group in ("all", "single", "multi", "val"):
                if not all(group in run for run in runs):
                    continue
                values = [run[group] for run in runs]
                std = statistics.stdev(values) if len(values) > 1 else 0.0
                cell[group] = [statistics.fmean(values), std]
            out.append(cell)
    return out


NAMES = {
    "teacher": "LEADER(T)",
    "plain": "LEADER(S) without distillation",
    "distilled": "LEADER(S)",
    "self": "control: self-distillation (the plain student as teacher)",
    "prior": "control: prior soft labels, the teacher's mean state",
    "noise": "control: noise of the teacher's shape, prior soft labels",
}


def markdown(cells: list[dict[str, Any]]) -> str:
    lines = [
        "| train patients | model | runs | test PRAUC | single-visit | multi-visit |",
        "|---|---|---|---|---|---|",
    ]
    for c in cells:
        values = " | ".join(f"{c[g][0]:.4f} ± {c[g][1]:.4f}" for g in ("all", "single", "multi"))
        lines.append(f"| {c['fraction']:.0%} | {NAMES[c['model']]} | {c['runs']} | {values} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), sharey=True)
    for ax, group in zip(axes, ("all", "single", "multi"), strict=True):
        for model, name in NAMES.items():
            mine = [c for c in cells if c["model"] == model]
            if mine:
                xs, ys = [c["fraction"] for c in mine], [c[group][0] for c in mine]
                errors = [c[group][1] for c in mine]
                style = ":" if model in ("self", "prior", "noise") else "-"
                ax.errorbar(xs, ys, yerr=errors, marker="o", capsize=3, label=name, linestyle=style)
        ax.set_xscale("log")
        ax.set_xlabel("share of training patients")
        ax.set_title(
            {"all": "whole test set", "single": "single-visit", "multi": "multi-visit"}[group]
        )
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test PRAUC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
