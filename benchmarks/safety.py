"""The DDI safety layer's trade-off: how far the DDI rate falls and how Jaccard moves.

For a trained student run and its dataset, on one split (test by default): metrics of the
plain thresholded sets and of ``ddi_safe_select`` at several margins (``leader.safety``).

    .venv/bin/python benchmarks/safety.py --run runs/student --dataset data/mimic3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def tradeoff(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    ddi: np.ndarray,
    threshold: float,
    margins: list[float],
) -> list[dict[str, Any]]:
    """One row for the plain sets, then one per margin."""
    from leader.metrics import compute
    from leader.safety import ddi_safe_select, far_above

    rows: list[dict[str, Any]] = []
    plain = compute(y_true, y_prob, threshold, ddi)
    rows.append({"selection": "threshold", "margin": None, "far_above": None, **plain})
    for margin in margins:
        chosen = ddi_safe_select(y_prob, ddi, threshold, margin)
        metrics = compute(y_true, y_prob, threshold, ddi, predicted=chosen)
        rows.append(
            {
                "selection": "ddi_safe",
                "margin": margin,
                "far_above": round(far_above(threshold, margin), 4),
                **metrics,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="student run folder")
    parser.add_argument("--dataset", type=Path, required=True, help="its dataset directory")
    parser.add_argument("--split", default="test")
    parser.add_argument("--margins", default="0,0.25,0.5,0.75,1", help="comma-separated")
    parser.add_argument("--json", action="store_true", help="print JSON rows")
    args = parser.parse_args()

    import torch

    from leader.data.store import VisitDataset
    from leader.recommend import load_model

    torch.set_num_threads(2)
    dataset = VisitDataset.load(args.dataset)
    model = load_model(args.run)
    samples = dataset.samples(args.split)
    y_true = dataset.targets(samples)
    y_prob = model.predict_proba(samples)
    ddi = dataset.ddi_matrix()
    margins = [float(m) for m in args.margins.split(",")]
    rows = tradeoff(y_true, y_prob, ddi, model.threshold, margins)
    if args.json:
        print(json.dumps({"run": str(args.run), "split": args.split, "rows": rows}))
        return
    print(
        f"{args.dataset.name} {args.split}: {len(samples)} samples, threshold "
        f"{model.threshold}, DDI source {dataset.ddi_source} ({len(dataset.ddi_pairs)} pairs)"
    )
    print(f"{'selection':<10} {'margin':>6} {'from':>6} {'jaccard':>8} {'f1':>7} "
          f"{'ddi_rate':>9} {'avg_med':>8}")  # fmt: skip
    base = rows[0]
    for row in rows:
        margin = "" if row["margin"] is None else f"{row['margin']:.2f}"
        start = "" if row["far_above"] is None else f"{row['far_above']:.2f}"
        print(
            f"{row['selection']:<10} {margin:>6} {start:>6} {row['jaccard']:8.4f} "
            f"{row['f1']:7.4f} {row['ddi_rate']:9.4f} {row['avg_med']:8.2f}"
            + (
                ""
                if row is base
                else f"   DDI {row['ddi_rate'] - base['ddi_rate']:+.4f}, "
                f"Jaccard {row['jaccard'] - base['jaccard']:+.4f}"
            )
        )


if __name__ == "__main__":
    main()
