"""Learning curves of teacher configurations, and what each one teaches (issue 10).

For every teacher configuration: validation PRAUC against CPU-seconds of training
(``time.process_time`` in the training process, evaluation excluded, the frozen-layer cache
included), the final test PRAUC (whole, single-visit, multi-visit), and the student distilled
from it beside the student without distillation and the two controls: distillation from the
backbone's hidden states before fine-tuning, and from random features of the same shape and
scale. Students run over ``--seeds``; every row is a mean ± std over them.

CPU-seconds, not wall time: on a shared machine wall time measures the neighbours.

    .venv/bin/python benchmarks/teacher_curve.py --dataset leader-demo/prepare/dataset \\
        --out runs/curve --teacher demo=src/leader/configs/demo.yaml \\
        --teacher labels8=configs/teacher-demo-labels.yaml --seeds 42 43 44

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


def teacher_config(config_file: Path, args: argparse.Namespace) -> Any:
    """The TeacherConfig of ``config_file`` with ``--threads`` and ``--cache-dir`` applied."""
    from leader.teacher import TeacherConfig

    config = TeacherConfig.from_dict(_section(config_file, "teacher"), str(config_file))
    if args.threads:
        config.threads = args.threads
    if args.cache_dir:
        config.cache_dir = str(args.cache_dir)
    return config


def random_control(features: Path) -> Path:
    """Random features of the shape and scale of ``features``, beside it (made once)."""
    from leader.teacher.predict import random_features

    noise = features.with_name("random.safetensors")
    if not noise.exists():
        random_features(features, noise, seed=0)
    return noise


def train_teacher_run(name: str, config_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Train (or reuse) one teacher, write its features and the untrained control's."""
    from leader.teacher import predict_teacher, train_teacher
    from leader.teacher.predict import predict_untrained

    folder = args.out / "teachers" / name
    config = teacher_config(config_file, args)
    features = folder / "features.safetensors"
    untrained = folder / "untrained.safetensors"
    cpu = time.process_time()
    resume = (folder / "run").exists()
    early = untrained if args.controls and not resume else None
    run = train_teacher(args.dataset, folder / "run", config, resume, features, early)
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    if not features.exists():
        predict_teacher(run, args.dataset, features)
    total_cpu = time.process_time() - cpu
    if args.controls and not untrained.exists():
        predict_untrained(config, args.dataset, untrained)
    noise = random_control(features) if args.controls else None
    return {
        "name": name,
        "config": str(config_file),
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
        "untrained": str(untrained) if args.controls else None,
        "random": str(noise) if noise else None,
    }


def teacher_test(features: Path, dataset: Any) -> dict[str, float]:
    from leader.teacher.features import read_features

    tensors, meta = read_features(features, require=("probabilities",))
    index = {sample_id: i for i, sample_id in enumerate(meta["sample_ids"])}
    samples = dataset.samples("test", meta.get("sample_mode", "all"))
    rows = [index[s.sample_id] for s in samples]
    return _groups(dataset, tensors["probabilities"][rows], samples)


def student_run(tag: str, features: Path | None, seed: int, args: argparse.Namespace) -> Any:
    """Train (or reuse) one student; its test PRAUC (whole, single, multi)."""
    from leader.data.store import VisitDataset
    from leader.student import StudentConfig, train_student
    from leader.student.model import LeaderStudent

    folder = args.out / "students" / f"{tag}-seed{seed}"
    values = _section(args.student_config, "student")
    values["train"] = dict(values.get("train") or {}) | {"seed": seed}
    if features is None:
        values["alpha"] = 0.0
    if not (folder / "metrics.json").exists():
        train_student(args.dataset, folder, StudentConfig.from_dict(values), features)
    dataset = VisitDataset.load(args.dataset)
    model = LeaderStudent.from_pretrained(folder)
    samples = dataset.samples("test", "all")
    return _groups(dataset, model.predict_proba(samples), samples)


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {}
    for tag, runs in rows.items():
        out[tag] = {k: list(_mean_std([r[k] for r in runs])) for k in ("all", "single", "multi")}
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| model | test PRAUC | single-visit | multi-visit | train CPU-s |",
        "|---|---|---|---|---|",
    ]

    def cell(pair: list[float]) -> str:
        return f"{pair[0]:.4f} ± {pair[1]:.4f}" if pair[1] else f"{pair[0]:.4f}"

    for teacher in result["teachers"]:
        test = teacher["test"]
        lines.append(
            f"| LEADER(T) {teacher['name']} | {test['all']:.4f} | {test['single']:.4f} | "
            f"{test['multi']:.4f} | {teacher['train_cpu_seconds'] or 0:.0f} |"
        )
    for tag, stats in result["students"].items():
        lines.append(
            f"| {tag} | {cell(stats['all'])} | {cell(stats['single'])} | {cell(stats['multi'])} | |"
        )
    seeds = ", ".join(str(s) for s in result["seeds"])
    lines.append("")
    lines.append(f"Students: mean ± std over seeds {seeds}; teachers: one run each.")
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
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    parser.add_argument("--no-controls", dest="controls", action="store_false")
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
    rows: dict[str, list[dict[str, float]]] = {}
    for seed in args.seeds:
        rows.setdefault("LEADER(S) without distillation", []).append(
            student_run("plain", None, seed, args)
        )
        for teacher in teachers:
            sources = [("", "features")]
            if args.controls:
                sources += [(" control: backbone before fine-tuning", "untrained"),
                            (" control: random features", "random")]  # fmt: skip
            for label, key in sources:
                tag = f"LEADER(S) from {teacher['name']}{label}"
                folder_tag = f"{teacher['name']}-{key}"
                rows.setdefault(tag, []).append(
                    student_run(folder_tag, Path(teacher[key]), seed, args)
                )
        print(f"students of seed {seed} done")
    result = {"seeds": args.seeds, "teachers": teachers, "students": summarise(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "curve.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (args.out / "curve.md").write_text(markdown(result), encoding="utf-8")
    plot(result, args.out / "curve.png")
    print(markdown(result))


if __name__ == "__main__":
    main()
