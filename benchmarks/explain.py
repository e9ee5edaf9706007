"""Faithfulness and cost of the explanations (``leader.explain``), per model and method.

Deletion curves on the test split: for each test sample and each of its ``--drugs`` most
probable drugs, remove the k items with the largest attributions (those that pushed the
drug up most) and rescore; remove k items drawn at random (``--draws`` times) for
comparison. A faithful explanation makes the drug's probability fall faster than random.
Removing k items at once is not what occlusion measured (one at a time), so occlusion
is tested too.

Cost: the median time to explain one patient (every recommended drug, 5 items each) on
one CPU thread, and a ``--batch``-patient batch's throughput.

    .venv/bin/python benchmarks/explain.py --dataset leader-demo/prepare/dataset \\
        --model leader_s=runs/student --model gamenet=runs/gamenet --out runs/explain

Writes ``explain.md`` (the table), ``explain.json`` and ``explain.png`` (the curves).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leader.data.store import Sample, VisitDataset
from leader.explain import (
    explain,
    input_items,
    integrated_gradients,
    occlusion,
    unwrap,
    without,
)
from leader.models import load_deployed


def attributions(model: Any, method: str, sample: Sample, drugs: list[int]) -> np.ndarray:
    """(items, drugs) attributions of one sample's items by ``method``."""
    net = unwrap(model)
    fields = getattr(getattr(net, "profile_vocab", None), "fields", None)
    items = input_items(sample, fields)
    if method == "occlusion":
        _, values = occlusion(model.predict_proba, [sample], [items])
        return values[0][:, drugs]
    if method == "attention":  # the teacher: items the prompt shows; the others score 0
        from leader.teacher.explain import attention_contributions

        _, found, split = attention_contributions(net, sample, items)
        row = {item: r for r, item in enumerate(found)}
        out = np.zeros((len(items), len(drugs)))
        for j, item in enumerate(items):
            if item in row:
                out[j] = split[row[item], drugs]
        return out
    return integrated_gradients(net, sample, items, drugs)[1]


def deletion(
    model: Any, method: str, samples: list[Sample], top_drugs: int, ks: list[int], draws: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    """Mean probability after removing the top-k attributed / k random items, per k."""
    full = np.asarray(model.predict_proba(samples))
    variants: list[Sample] = []
    plan: list[tuple[int, int, str, int]] = []  # (sample, drug, "top"/"random", k)
    for i, sample in enumerate(samples):
        net = unwrap(model)
        fields = getattr(getattr(net, "profile_vocab", None), "fields", None)
        items = input_items(sample, fields)
        if not items:
            continue
        drugs = [int(d) for d in np.argsort(-full[i], kind="stable")[:top_drugs]]
        values = attributions(model, method, sample, drugs)
        for column, drug in enumerate(drugs):
            order = np.argsort(-values[:, column], kind="stable")
            for k in ks:
                n = min(k, len(items))
                variants.append(without(sample, [items[j] for j in order[:n]]))
                plan.append((i, drug, "top", k))
                for _ in range(draws):
                    chosen = rng.choice(len(items), size=n, replace=False)
                    variants.append(without(sample, [items[j] for j in chosen]))
                    plan.append((i, drug, "random", k))
    prob = np.concatenate([np.asarray(model.predict_proba(variants[s : s + 4096]))
                           for s in range(0, len(variants), 4096)])  # fmt: skip
    curves: dict[str, dict[int, list[float]]] = {"top": {}, "random": {}}
    for (i, drug, kind, k), p in zip(plan, prob[np.arange(len(plan)), [d for _, d, _, _ in plan]],
                                     strict=True):  # fmt: skip
        curves[kind].setdefault(k, []).append(float(full[i, drug] - p))
    start = [float(full[i, d]) for i in range(len(samples))
             for d in np.argsort(-full[i], kind="stable")[:top_drugs]]  # fmt: skip
    return {
        "start": float(np.mean(start)),
        "drop_top": {k: float(np.mean(v)) for k, v in curves["top"].items()},
        "drop_random": {k: float(np.mean(v)) for k, v in curves["random"].items()},
        "pairs": len(curves["top"].get(ks[0], [])),
    }


def cost(model: Any, method: str, samples: list[Sample], batch: int) -> dict[str, float]:
    """Median ms per patient explained alone (recommended drugs, 5 items), and a batch's
    patients per second (occlusion only: it explains a batch in one pass)."""
    times = []
    for sample in samples:
        started = time.perf_counter()
        explain(model, [sample], top_items=5, method=method)
        times.append((time.perf_counter() - started) * 1000)
    out = {"median_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90))}
    if method == "occlusion" and batch:
        many = [samples[i % len(samples)] for i in range(batch)]
        started = time.perf_counter()
        explain(model, many, top_items=5, method=method)
        out["batch_patients_per_s"] = batch / (time.perf_counter() - started)
    return out


def plot(results: dict[str, Any], ks: list[int], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, r) in enumerate(results.items()):
        color = f"C{i}"
        top = [r["start"] - r["drop_top"][k] for k in ks]
        rand = [r["start"] - r["drop_random"][k] for k in ks]
        ax.plot([0, *ks], [r["start"], *top], "-o", color=color, label=f"{label}: top-k")
        ax.plot([0, *ks], [r["start"], *rand], "--", color=color, alpha=0.6,
                label=f"{label}: random k")  # fmt: skip
    ax.set_xlabel("input items removed (k)")
    ax.set_ylabel("mean probability of the explained drug")
    ax.set_title("Deletion curves (test split): attributed vs random removal")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--model", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--ig", action="store_true", help="also integrated gradients (leader_s)")
    parser.add_argument("--samples", type=int, default=200, help="test samples for the curves")
    parser.add_argument("--drugs", type=int, default=3, help="most probable drugs per sample")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--draws", type=int, default=3, help="random removals per k")
    parser.add_argument("--timing", type=int, default=100, help="patients timed one by one")
    parser.add_argument("--batch", type=int, default=1000, help="patients in the timed batch")
    parser.add_argument("--teacher-samples", type=int, default=50,
                        help="test samples for leader_t (each removal reruns the LLM)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = VisitDataset.load(args.dataset)
    rng = np.random.default_rng(args.seed)
    test = dataset.samples("test")
    chosen = [test[i] for i in sorted(rng.choice(len(test), min(args.samples, len(test)),
                                                 replace=False))]  # fmt: skip
    results: dict[str, Any] = {}
    for spec in args.model:
        name, _, folder = spec.partition("=")
        if name == "leader_t":  # a `leader teacher train` folder (teacher.json)
            from leader.teacher import LeaderTeacher

            model = LeaderTeacher.from_pretrained(folder)
        else:
            model = load_deployed(folder)
        methods = ["occlusion"] + (["integrated_gradients"] if args.ig and name == "leader_s"
                                   else [])  # fmt: skip
        samples, timed, batch = chosen, chosen[: args.timing], args.batch
        if name == "leader_t":
            methods = ["attention", "occlusion"]
            samples = timed = chosen[: args.teacher_samples]
            batch = 0
        for method in methods:
            label = f"{name} ({method})"
            started = time.perf_counter()
            results[label] = deletion(model, method, samples, args.drugs, args.ks, args.draws, rng)
            results[label]["curve_seconds"] = time.perf_counter() - started
            results[label]["samples"] = len(samples)
            results[label]["cost"] = cost(model, method, timed, batch)
            print(label, json.dumps(results[label]), flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "explain.json").write_text(json.dumps(
        {"dataset": str(args.dataset), "samples": len(chosen), "ks": args.ks,
         "threads": 1, "results": results}, indent=2))  # fmt: skip
    lines = [
        "| model (method) | p start | " + " | ".join(f"drop @{k}: top / random" for k in args.ks)
        + " | ms / patient (median, 1 thread) | batch patients/s |",
        "|---" * (4 + len(args.ks)) + "|",
    ]
    for label, r in results.items():
        drops = " | ".join(f"{r['drop_top'][k]:.3f} / {r['drop_random'][k]:.3f}" for k in args.ks)
        rate = r["cost"].get("batch_patients_per_s")
        lines.append(f"| {label} | {r['start']:.3f} | {drops} | {r['cost']['median_ms']:.1f} | "
                     f"{'' if rate is None else f'{rate:.0f}'} |")  # fmt: skip
    (args.out / "explain.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, args.ks, args.out / "explain.png")


if __name__ == "__main__":
    main()
