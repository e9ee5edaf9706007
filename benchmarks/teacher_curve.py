"""Learning curves of teacher configurations, and whose knowledge a distilled student holds.

For every teacher configuration: validation PRAUC against CPU-seconds of training
(``time.process_time`` in the training process, evaluation excluded, the frozen-layer cache
included) and the final test PRAUC (whole, single-visit, multi-visit). Then, per student
seed, the student without distillation, the student distilled from each teacher, and the
controls (issue 19), each through exactly the same terms, settings and distillation-weight
search as the distilled student (``leader.controls``):

- self-distillation: the plain student of the same seed as the teacher (the LLM's claim is
  its gain over this row);
- prior soft labels (each drug's training frequency) and the teacher's mean state;
- noise of the teacher's width and scale with prior soft labels;
- teacher-side controls of the first teacher's exact configuration: ``--no-pretraining
  SEED ...`` (the same architecture with random weights) and ``--no-words SEED ...``
  (prompts with the codes but not their names), one teacher per seed; the student from
  teacher seed k trains with student seed k of ``--seeds``.

Every student row is a mean ± std over seeds, with its paired difference to the distilled
student (mean ± std of the per-seed differences). Settings are chosen on validation (the
students' distillation weights by the search; each row records them); test is reported
once. CPU-seconds, not wall time: on a shared machine wall time measures the neighbours.

    .venv/bin/python benchmarks/teacher_curve.py --dataset leader-demo/prepare/dataset \\
        --out runs/curve --teacher labels8=configs/teacher-demo-labels.yaml \\
        --seeds 42 43 44 45 46 --no-pretraining 42 43 44 --no-words 42 43 44

``--teacher NAME=FILE`` takes a teacher config (a pipeline config's ``teacher:`` section is
used when present); ``--student-config`` a pipeline config whose ``student:`` section trains
the students (default: the demo's). Finished runs in ``--out`` are reused, so a second call
only adds what is missing. Writes ``curve.json``, ``curve.md`` and ``curve.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "leader" / "configs" / "demo.yaml"


def _section(path: Path, name: str) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(data.get(name, data) if isinstance(data.get(name), dict) else data)


def _groups(dataset: Any, probabilities: np.ndarray, samples: list[Any]) -> dict[str, float]:
    from leader.metrics import compute

    truth = dataset.targets(samples)
    single = np.array([s.is_single_visit for s in samples])
    return {
        "all": compute(truth, probabilities)["prauc"],
        "single": compute(truth[single], probabilities[single])["prauc"],
        "multi": compute(truth[~single], probabilities[~single])["prauc"],
    }


def teacher_config(config_file: Path, args: argparse.Namespace, **overrides: Any) -> Any:
    """The TeacherConfig of ``config_file`` with ``overrides``, ``--threads`` and
    ``--cache-dir`` applied."""
    from leader.teacher import TeacherConfig

    values = _section(config_file, "teacher") | overrides
    config = TeacherConfig.from_dict(values, str(config_file))
    if args.threads:
        config.threads = args.threads
    if args.cache_dir:
        config.cache_dir = str(args.cache_dir)
    return config


def control_features(features: Path, dataset: Path) -> dict[str, Path]:
    """The prior and noise controls of ``features``, beside it (made once)."""
    from leader.controls import noise_features, prior_features

    out = {"prior": features.with_name("prior.safetensors"),
           "noise": features.with_name("noise.safetensors")}  # fmt: skip
    if not out["prior"].exists():
        prior_features(features, dataset, out["prior"])
    if not out["noise"].exists():
        noise_features(features, dataset, out["noise"], seed=0)
    return out


def train_teacher_run(
    name: str, config_file: Path, args: argparse.Namespace, **overrides: Any
) -> dict[str, Any]:
    """Train (or reuse) one teacher and write its features."""
    from leader.teacher import predict_teacher, train_teacher

    folder = args.out / "teachers" / name
    config = teacher_config(config_file, args, **overrides)
    features = folder / "features.safetensors"
    cpu = time.process_time()
    resume = (folder / "run").exists()
    run = train_teacher(args.dataset, folder / "run", config, resume, features)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    if not features.exists():
        predict_teacher(run, args.dataset, features)
    total_cpu = time.process_time() - cpu
    return {
        "name": name,
        "config": str(config_file),
        "overrides": overrides,
        "best_val_prauc": metrics.get("best_val_prauc"),
        "train_cpu_seconds": metrics.get("train_cpu_seconds"),
        # training + features for every sample (this process; 0 when reused)
        "total_cpu_seconds": round(total_cpu, 1),
        "curve": [
            {"cpu_seconds": cpu_s, "step": h["step"], "val_prauc": h["val_prauc"]}
            for h, cpu_s in zip(
                metrics["history"], metrics.get("history_cpu_seconds", []), strict=False
            )
        ],
        "features": str(features),
    }


def teacher_test(features: Path, dataset: Any) -> dict[str, float]:
    from leader.teacher.features import read_features

    tensors, meta = read_features(features, require=("probabilities",))
    index = {sample_id: i for i, sample_id in enumerate(meta["sample_ids"])}
    samples = dataset.samples("test", meta.get("sample_mode", "all"))
    rows = [index[s.sample_id] for s in samples]
    return _groups(dataset, tensors["probabilities"][rows], samples)


def student_run(tag: str, features: Path | None, seed: int, args: argparse.Namespace) -> Any:
    """Train (or reuse) one student; its test PRAUC (whole, single, multi), its validation
    PRAUC and the distillation weights validation chose. ``features`` None: the plain
    student, which also stands for alpha = kd = 0 in the others' weight search."""
    from leader.data.store import VisitDataset
    from leader.student import StudentConfig, train_student
    from leader.student.model import LeaderStudent

    folder = args.out / "students" / f"{tag}-seed{seed}"
    plain = args.out / "students" / f"plain-seed{seed}"
    values = _section(args.student_config, "student")
    values["train"] = dict(values.get("train") or {}) | {"seed": seed}
    if features is None:
        values["alpha"], values["kd"] = 0.0, 0.0
    if not (folder / "metrics.json").exists():
        train_student(args.dataset, folder, StudentConfig.from_dict(values), features,
                      plain_run=plain if features is not None else None)  # fmt: skip
    dataset = VisitDataset.load(args.dataset)
    model = LeaderStudent.from_pretrained(folder)
    samples = dataset.samples("test", "all")
    metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    search = metrics.get("distillation_search")
    chosen = search["chosen"] if search else {"alpha": model.config.alpha, "kd": model.config.kd}
    return _groups(dataset, model.predict_proba(samples), samples) | {
        "val": metrics["best_val_prauc"],
        "chosen": f"{chosen['alpha']:g}:{chosen['kd']:g}",
    }


def self_teacher(seed: int, args: argparse.Namespace) -> Path:
    """The plain student of ``seed`` as a teacher: its features file (made once)."""
    from leader.controls import self_features

    plain = args.out / "students" / f"plain-seed{seed}"
    out = args.out / "teachers" / f"self-seed{seed}" / "features.safetensors"
    if not out.exists():
        self_features(plain, args.dataset, out)
    return out


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


GROUPS = ("all", "single", "multi")


def summarise(
    rows: dict[str, list[dict[str, Any]]], reference: str | None
) -> dict[str, dict[str, Any]]:
    """Mean ± std per row and group; ``paired``: the per-seed difference to ``reference``
    (rows of equal length are paired seed by seed)."""
    out: dict[str, dict[str, Any]] = {}
    base = rows.get(reference or "", [])
    for tag, runs in rows.items():
        stats: dict[str, Any] = {k: list(_mean_std([r[k] for r in runs])) for k in GROUPS}
        stats["val"] = list(_mean_std([r["val"] for r in runs]))
        stats["chosen"] = sorted({r["chosen"] for r in runs})
        stats["runs"] = len(runs)
        if base and tag != reference and len(base) == len(runs):
            diffs = [r["all"] - b["all"] for r, b in zip(runs, base, strict=True)]
            stats["paired"] = list(_mean_std(diffs))
        out[tag] = stats
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | runs | test PRAUC | single-visit | multi-visit | minus LEADER(S), paired "
        "| val PRAUC | alpha:kd chosen | train CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(pair: list[float]) -> str:
        return f"{pair[0]:.4f} ± {pair[1]:.4f}" if pair[1] else f"{pair[0]:.4f}"

    for tag, stats in result["teacher_rows"].items():
        lines.append(
            f"| {tag} | {stats['runs']} | {cell(stats['all'])} | {cell(stats['single'])} | "
            f"{cell(stats['multi'])} | | {cell(stats['val'])} | | {stats['cpu']:.0f} |"
        )
    for tag, stats in result["students"].items():
        paired = cell(stats["paired"]) if "paired" in stats else ""
        lines.append(
            f"| {tag} | {stats['runs']} | {cell(stats['all'])} | {cell(stats['single'])} | "
            f"{cell(stats['multi'])} | {paired} | {cell(stats['val'])} | "
            f"{', '.join(stats['chosen'])} | |"
        )
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines.append("")
    lines.append(
        f"Student seeds {seeds}; mean ± std over runs; paired: per seed, the row minus "
        f"{result['reference']}. Teacher-side control students pair teacher seed k with "
        "student seed k. Test PRAUC reported once; the weights were chosen on validation."
    )
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for teacher in result["teachers"]:
        curve = teacher["curve"]
        if curve:
            xs = [p["cpu_seconds"] for p in curve]
            line = ax.plot(xs, [p["val_prauc"] for p in curve], marker="o", label=teacher["name"])
            ax.scatter([xs[-1]], [teacher["test"]["all"]], marker="*", s=120,
                       color=line[0].get_color(), zorder=3)  # fmt: skip
    plain = result["students"].get("LEADER(S) without distillation")
    if plain:
        ax.axhline(plain["all"][0], color="grey", linestyle="--",
                   label="LEADER(S) without distillation (test)")  # fmt: skip
    ax.set_xlabel("teacher training CPU-seconds (process time)")
    ax.set_ylabel("PRAUC (lines: validation; stars: test)")
    ax.set_title("LEADER(T) learning curves")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/curve"))
    parser.add_argument("--teacher", action="append", default=[], metavar="NAME=FILE")
    parser.add_argument("--student-config", type=Path, default=DEMO)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45, 46])
    parser.add_argument("--no-controls", dest="controls", action="store_false",
                        help="leave out the student-side controls (self, prior, noise)")
    parser.add_argument("--no-pretraining", type=int, nargs="*", default=[], metavar="SEED",
                        help="teacher seeds of the first teacher on random weights")
    parser.add_argument("--no-words", type=int, nargs="*", default=[], metavar="SEED",
                        help="teacher seeds of the first teacher on prompts without names")
    parser.add_argument("--teachers-only", action="store_true",
                        help="train (or reuse) the teachers and stop: a second process can "
                        "train the students of finished teachers meanwhile")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = default)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="keep the frozen layers' output here between teacher runs (cache_dir)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from leader.data.store import VisitDataset

    dataset = VisitDataset.load(args.dataset)
    teachers = []
    for spec in args.teacher:
        name, _, file = spec.partition("=")
        teacher = train_teacher_run(name, Path(file), args)
        teacher["test"] = teacher_test(Path(teacher["features"]), dataset)
        teachers.append(teacher)
        print(f"teacher {name}: {teacher['train_cpu_seconds']:.0f} CPU-s, test {teacher['test']}")
    side: dict[str, list[dict[str, Any]]] = {}  # teacher-side controls
    if teachers:
        first = teachers[0]
        kinds = [("no pretraining", "nopre", {"backbone_init": "random"}, args.no_pretraining),
                 ("no words", "nowords", {"code_names": False}, args.no_words)]  # fmt: skip
        for label, short, overrides, seeds in kinds:
            for seed in seeds:
                name = f"{first['name']}-{short}-seed{seed}"
                config = Path(first["config"])
                run = train_teacher_run(name, config, args, **overrides, seed=seed)
                run["test"] = teacher_test(Path(run["features"]), dataset)
                run["label"] = label
                side.setdefault(label, []).append(run)
                print(f"teacher {run['name']}: test {run['test']}")
    if args.teachers_only:
        return
    rows: dict[str, list[dict[str, Any]]] = {}
    reference = f"LEADER(S) from {teachers[0]['name']}" if teachers else None
    for index, seed in enumerate(args.seeds):
        rows.setdefault("LEADER(S) without distillation", []).append(
            student_run("plain", None, seed, args)
        )
        if teachers and args.controls:
            label = "control: self-distillation (the plain student of the same seed as teacher)"
            rows.setdefault(label, []).append(
                student_run("self", self_teacher(seed, args), seed, args)
            )
        for teacher in teachers:
            features = Path(teacher["features"])
            sources = [(f"LEADER(S) from {teacher['name']}", teacher["name"], features)]
            if args.controls:
                controls = control_features(features, args.dataset)
                sources += [
                    (f"control: prior soft labels, {teacher['name']}'s mean state",
                     f"{teacher['name']}-prior", controls["prior"]),
                    (f"control: noise of {teacher['name']}'s shape, prior soft labels",
                     f"{teacher['name']}-noise", controls["noise"]),
                ]  # fmt: skip
            for label, tag, source in sources:
                rows.setdefault(label, []).append(student_run(tag, source, seed, args))
        for label, runs in side.items():
            if index < len(runs):
                run = runs[index]
                tag = f"LEADER(S) from the {label} teacher"
                rows.setdefault(tag, []).append(
                    student_run(run["name"], Path(run["features"]), seed, args)
                )
        print(f"students of seed {seed} done")
    teacher_rows = {}
    for teacher in teachers:
        teacher_rows[f"LEADER(T) {teacher['name']}"] = _teacher_stats([teacher])
    for label, runs in side.items():
        teacher_rows[f"LEADER(T) {teachers[0]['name']}, {label} (control)"] = _teacher_stats(runs)
    result = {
        "seeds": args.seeds,
        "reference": reference,
        "teachers": teachers + [r for runs in side.values() for r in runs],
        "teacher_rows": teacher_rows,
        "students": summarise(rows, reference),
        "runs": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (args.out / "curve.md").write_text(markdown(result), encoding="utf-8")
    plot(result, args.out / "curve.png")
    print(markdown(result))


def _teacher_stats(runs: list[dict[str, Any]]) -> dict[str, Any]:
    stats: dict[str, Any] = {k: list(_mean_std([r["test"][k] for r in runs])) for k in GROUPS}
    stats["val"] = list(_mean_std([float(r["best_val_prauc"] or 0) for r in runs]))
    stats["cpu"] = statistics.fmean([float(r["train_cpu_seconds"] or 0) for r in runs])
    stats["runs"] = len(runs)
    return stats


if __name__ == "__main__":
    main()
