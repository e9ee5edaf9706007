"""The report folder of ``leader run``: report.md, results.json and PNG plots.

Tables for LEADER(T), LEADER(S), the student without distillation and the popularity
floor, on the whole test set and on single- and multi-visit samples (mean ± std over 10
rounds of 80%); plots of training curves, metrics per model, Jaccard against DDI rate and
teacher vs student speed. Matplotlib with the Agg backend (no display needed).

>>> write_report(Path("out/report"), "demo", results, histories, steps, config)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leader.io import write_json_atomic
from leader.results import METRIC_COLUMNS, RULES, Row, markdown_rows

LABELS: dict[str, str] = {
    "teacher": "LEADER(T)",
    "student": "LEADER(S)",
    "student_no_distill": "LEADER(S) w/o distillation",
    "student_self": "LEADER(S) self-distilled: the student w/o distillation as teacher (control)",
    "student_prior": "LEADER(S) from prior soft labels (control)",
    "student_noise": "LEADER(S) from noise of the teacher's shape, prior soft labels (control)",
    "popularity": "Popularity",
    "oracle": "Oracle: the generator's true probabilities (upper bound)",
}
GROUPS: dict[str, str] = {
    "all": "all",
    "single_visit": "single-visit",
    "multi_visit": "multi-visit",
}
COLUMNS = METRIC_COLUMNS  # the table model of leader.results (shared with the benchmark)


def metrics_table(results: dict[str, Any], key: str) -> list[str]:
    """Markdown rows: one per model and group, rounds mean ± std, at one threshold."""
    rows = []
    for group, group_label in GROUPS.items():
        for name, label in LABELS.items():
            if name not in results:
                continue
            report = results[name]
            result = report["results"][key][group]
            if result["rounds"] is None:
                continue
            rows.append(
                Row(
                    model=f"{label} ({group_label})",
                    rule=RULES[key],
                    threshold=report["thresholds"]["default" if key == "at_0.5" else "validation"],
                    group=group,
                    samples=result["samples"],
                    cells={m: result["rounds"][m] for m, _ in COLUMNS},
                )
            )
    return markdown_rows(rows, significance=False)


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """Compact numbers per model (validation threshold): rounds means and stds, efficiency."""
    out: dict[str, Any] = {}
    for name, report in results.items():
        entry: dict[str, Any] = {"threshold": report["thresholds"]["validation"]}
        for group in GROUPS:
            result = report["results"]["at_validation"][group]
            if result["rounds"] is None:
                continue
            entry[group] = {
                "samples": result["samples"],
                **{m: result["rounds"][m] for m, _ in COLUMNS},
            }
        if "efficiency" in report:
            entry["efficiency"] = report["efficiency"]
        if "ddi_safe" in report:
            entry["ddi_safe"] = report["ddi_safe"]["metrics"]
        out[name] = entry
    return out


def write_report(
    folder: Path,
    name: str,
    results: dict[str, Any],
    histories: dict[str, Any],
    steps: dict[str, Any],
    config: dict[str, Any],
) -> Path:
    """Write report.md, results.json and the plots into ``folder``; return report.md."""
    folder.mkdir(parents=True, exist_ok=True)
    plots = _plots(folder, results, histories)
    compact = summary(results)
    write_json_atomic(
        folder / "results.json",
        {"name": name, "summary": compact, "models": results, "steps": steps, "config": config},
    )
    lines = [f"# LEADER report: {name}", ""]
    data = config.get("data", {})
    rounds = config.get("evaluate", {}).get("rounds", 10)
    lines += [
        f"Data source: `{data.get('source')}`. Metrics on the test split; each cell is the "
        f"mean ± std over {rounds} rounds of a random 80% of the test samples (DESIGN.md).",
        "",
    ]
    if "teacher" not in results:
        lines += [
            "No teacher in this run (teacher disabled): LEADER(S) was trained without "
            "distillation.",
            "",
        ]
    lines += ["## At the threshold chosen on validation (Jaccard)", ""]
    lines += metrics_table(results, "at_validation")
    lines += ["", "## At threshold 0.5", ""]
    lines += metrics_table(results, "at_0.5")
    lines += ["", *_verdict(compact), *_searches(results), "", "## Efficiency (this CPU)", ""]
    lines += [
        "| model | parameters | latency, 1 patient (ms) | throughput (patients/s) |",
        "|---|---|---|---|",
    ]
    for key, label in LABELS.items():
        eff = results.get(key, {}).get("efficiency")
        if eff:
            params = f"{eff['parameters']:,}" if eff.get("parameters") is not None else "-"
            lines.append(
                f"| {label} | {params} | {eff['latency_ms']:.2f} | {eff['throughput_per_s']:,.1f} |"
            )
    teacher_eff = results.get("teacher", {}).get("efficiency")
    student_eff = results.get("student", {}).get("efficiency")
    if teacher_eff and student_eff:
        ratio = student_eff["throughput_per_s"] / max(teacher_eff["throughput_per_s"], 1e-9)
        lines += [
            "",
            f"The student serves **{ratio:,.0f}x** as many patients per second as the "
            "teacher on this CPU.",
        ]
    safe = {k: v["ddi_safe"] for k, v in compact.items() if "ddi_safe" in v}
    if safe:
        lines += [
            "",
            "## DDI-safe selection (`--ddi-safe`), validation threshold, whole test set",
            "",
            "| model | Jaccard | F1 | DDI rate | #MED |",
            "|---|---|---|---|---|",
        ]
        for key, label in LABELS.items():
            if key in safe:
                m = safe[key]
                lines.append(
                    f"| {label} | {m['jaccard']:.4f} | {m['f1']:.4f} | {m['ddi_rate']:.4f} | "
                    f"{m['avg_med']:.2f} |"
                )
    lines += calibration_section(folder, results)
    lines += ["", "## Steps", "", "| step | seconds | reused |", "|---|---|---|"]
    for step, record in steps.items():
        lines.append(
            f"| {step} | {record['seconds']:.1f} | {'yes' if record['reused'] else 'no'} |"
        )
    lines += ["", "## Plots", ""]
    lines += [f"![{title}]({file})" for title, file in plots]
    target = folder / "report.md"
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def _searches(results: dict[str, Any]) -> list[str]:
    """Which distillation weights validation chose for each distilled student."""
    rows = []
    for key, label in LABELS.items():
        search = results.get(key, {}).get("distillation_search")
        if search:
            tried = ", ".join(
                f"{c['alpha']:g}:{c['kd']:g} {c['best_val_prauc']:.4f}"
                for c in search["candidates"]
            )
            chosen = search["chosen"]
            rows.append(f"| {label} | {chosen['alpha']:g}:{chosen['kd']:g} | {tried} |")
    if not rows:
        return []
    return [
        "",
        "## Distillation weights chosen on validation",
        "",
        "Each distilled student trained once per alpha:kd candidate and kept the best "
        "validation PRAUC (0:0 is the student without distillation).",
        "",
        "| student | chosen alpha:kd | candidates (validation PRAUC) |",
        "|---|---|---|",
        *rows,
    ]


def calibration_section(folder: Path, results: dict[str, Any]) -> list[str]:
    """ECE / Brier before -> after calibration and the conformal sets per model (fitted on
    validation, measured on test), and the reliability diagram (reliability.png)."""
    from leader.calibration import markdown_table, plot_reliability, summarize

    reports = {
        label: results[key]["calibration"]
        for key, label in LABELS.items()
        if key in results and results[key].get("calibration")
    }
    if not reports:
        return []
    lines = [
        "",
        "## Calibration and conformal sets (test)",
        "",
        "Calibration fitted on validation (the method with the lowest out-of-fold Brier "
        "score: none, temperature, per-drug Platt or isotonic); ECE (15 bins) and Brier over "
        "every (visit, drug) before -> after. Conformal risk control sets fitted on the "
        "validation visits: test miss rate (mean fraction of a visit's drugs left out; "
        "guaranteed <= alpha in expectation) / mean set size.",
        "",
        *markdown_table({label: summarize([r]) for label, r in reports.items()}),
    ]
    curves = {label: r["reliability"] for label, r in reports.items()}
    if plot_reliability(folder / "reliability.png", curves):
        lines += ["", "![Reliability diagram (test)](reliability.png)"]
    return lines


def _verdict(compact: dict[str, Any]) -> list[str]:
    """One sentence per comparison the issue asks for, computed, not asserted."""
    out = []

    def prauc(name: str) -> tuple[float, float] | None:
        entry = compact.get(name, {}).get("all")
        return (entry["prauc"]["mean"], entry["prauc"]["std"]) if entry else None

    student, plain, popular = prauc("student"), prauc("student_no_distill"), prauc("popularity")
    teacher, oracle = prauc("teacher"), prauc("oracle")
    controls = {k: prauc(k) for k in ("student_self", "student_prior", "student_noise")}
    if student and popular:
        out.append(
            f"- LEADER(S) vs popularity: PRAUC {student[0]:.4f} vs {popular[0]:.4f} "
            f"({student[0] - popular[0]:+.4f})."
        )
    if student and plain:
        out.append(
            f"- Distillation: PRAUC {student[0]:.4f} with vs {plain[0]:.4f} without "
            f"({student[0] - plain[0]:+.4f}; round std {student[1]:.4f} / {plain[1]:.4f})."
        )
    if student and controls["student_self"]:
        out.append(
            f"- What the LLM adds over distilling the student into itself (LEADER(S) minus "
            f"the self-distilled student, same terms and weight search): "
            f"{student[0] - controls['student_self'][0]:+.4f}."
        )
    for key in ("student_prior", "student_noise"):
        value = controls[key]
        if student and value:
            out.append(
                f"- LEADER(S) minus the control '{LABELS[key]}': {student[0] - value[0]:+.4f} "
                "(a control can score as well as LEADER(S) if the gain is regularisation)."
            )
    if teacher and plain:
        out.append(
            f"- LEADER(T) vs LEADER(S) without distillation: PRAUC {teacher[0]:.4f} vs "
            f"{plain[0]:.4f} ({teacher[0] - plain[0]:+.4f})."
        )
    if oracle:
        models = [(prauc(k), k) for k in compact if k != "oracle"]
        best = max((v[0], k) for v, k in models if v is not None)
        out.append(
            f"- The ceiling of this data (the generator's own probabilities): PRAUC "
            f"{oracle[0]:.4f}; the best model ({LABELS.get(best[1], best[1])}) is "
            f"{oracle[0] - best[0]:+.4f} below it."
        )
    out.append(
        "- One training run per model: differences within a few round stds are not "
        "evidence (benchmarks/teacher_curve.py runs several seeds; it also trains the "
        "teacher-side controls: a randomly initialised backbone and prompts without names)."
    )
    return out


def _plots(
    folder: Path, results: dict[str, Any], histories: dict[str, Any]
) -> list[tuple[str, str]]:
    from leader.optional import available

    if not available("matplotlib"):  # the plots extra is optional: the tables still come
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []
    names = [n for n in LABELS if n in results]

    # 1. training curves
    curves = {k: v for k, v in histories.items() if k != "teacher" and v}
    teacher = histories.get("teacher") or {}
    teacher_curve = teacher.get("history") or teacher.get("evaluations") or []
    if curves or teacher_curve:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
        for key, history in curves.items():
            epochs = [h["epoch"] for h in history]
            axes[0].plot(epochs, [h["loss"] for h in history], label=LABELS[key])
            axes[1].plot(epochs, [h["val"] for h in history], label=LABELS[key])
        axes[0].set(title="student training loss", xlabel="epoch", ylabel="loss")
        axes[1].set(title="validation PRAUC", xlabel="epoch", ylabel="PRAUC")
        points = [(h.get("step"), h.get("val_prauc")) for h in teacher_curve if isinstance(h, dict)]
        points = [(s, v) for s, v in points if s is not None and v is not None]
        if points:
            twin = axes[1].twiny()
            twin.plot(*zip(*points, strict=True), "k--", label="LEADER(T) (steps, top axis)")
            twin.set_xlabel("teacher step")
            twin.legend(loc="lower right", fontsize=8)
        axes[0].legend(fontsize=8)
        axes[1].legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(folder / "training_curves.png", dpi=110)
        plt.close(fig)
        made.append(("training curves", "training_curves.png"))

    # 2. metrics per model
    metrics = [("prauc", "PRAUC"), ("jaccard", "Jaccard"), ("f1", "F1")]
    fig, ax = plt.subplots(figsize=(8, 3.8))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        rounds = results[name]["results"]["at_validation"]["all"]["rounds"]
        xs = [j + i * width for j in range(len(metrics))]
        ax.bar(
            xs,
            [rounds[m]["mean"] for m, _ in metrics],
            width,
            yerr=[rounds[m]["std"] for m, _ in metrics],
            label=LABELS[name],
            capsize=3,
        )
    ax.set_xticks([j + width * (len(names) - 1) / 2 for j in range(len(metrics))])
    ax.set_xticklabels([label for _, label in metrics])
    ax.set(ylim=(0, 1), title="test metrics per model (validation threshold)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "metrics.png", dpi=110)
    plt.close(fig)
    made.append(("metrics per model", "metrics.png"))

    # 3. Jaccard against DDI rate
    fig, ax = plt.subplots(figsize=(5, 4))
    for name in names:
        rounds = results[name]["results"]["at_validation"]["all"]["rounds"]
        ax.errorbar(
            rounds["ddi_rate"]["mean"],
            rounds["jaccard"]["mean"],
            xerr=rounds["ddi_rate"]["std"],
            yerr=rounds["jaccard"]["std"],
            fmt="o",
            label=LABELS[name],
            capsize=3,
        )
    ax.set(xlabel="DDI rate (lower is safer)", ylabel="Jaccard", title="accuracy vs safety")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "jaccard_ddi.png", dpi=110)
    plt.close(fig)
    made.append(("Jaccard against DDI rate", "jaccard_ddi.png"))

    # 4. teacher vs student speed
    speed = [
        (LABELS[n], results[n]["efficiency"]["throughput_per_s"])
        for n in ("teacher", "student")
        if results.get(n, {}).get("efficiency")
    ]
    if speed:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(
            [s[0] for s in speed],
            [s[1] for s in speed],
            color=["tab:gray", "tab:blue"][: len(speed)],
        )
        ax.set_yscale("log")
        ax.set(ylabel="patients / s (log scale)", title="inference throughput on this CPU")
        for i, (_, value) in enumerate(speed):
            ax.text(i, value, f"{value:,.1f}", ha="center", va="bottom")
        fig.tight_layout()
        fig.savefig(folder / "speed.png", dpi=110)
        plt.close(fig)
        made.append(("teacher vs student speed", "speed.png"))
    return made
