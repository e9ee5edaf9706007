"""GPU readiness: full-depth teacher on full prompts, features, distillation, in one go.

Trains the teacher of ``configs/teacher-gpu-full.yaml`` (SmolLM2-135M, all 30 layers, 512-token
prompts with 3 history visits, 3,000 steps of batch 32, bf16) on the demo cohort, predicts
its features, trains the student with and without distillation, and prints test PRAUC,
training tokens/s and peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: max RSS).

    .venv/bin/python benchmarks/teacher_gpu.py --out runs/gpu
    .venv/bin/python benchmarks/teacher_gpu.py --out runs/gpu-smoke --set max_steps=2 \\
        --set max_layers=1 --set eval_every=0 --patients 200      # a CPU smoke run

``--dataset DIR`` uses a prepared dataset instead of generating the demo cohort.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _value(text: str) -> Any:
    return yaml.safe_load(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "teacher-gpu-full.yaml")
    parser.add_argument("--dataset", type=Path, help="a prepared dataset (default: demo cohort)")
    parser.add_argument("--patients", type=int, default=2000, help="demo cohort size")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu"))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()

    import torch

    from leader.student import StudentConfig, train_student
    from leader.teacher import TeacherConfig, predict_teacher, train_teacher

    dataset = args.dataset
    if dataset is None:
        from leader.data.prepare import prepare_events
        from leader.data.synthetic import generate, write

        raw = write(generate(args.patients, 0), args.out / "raw")
        dataset = args.out / "dataset"
        if not (dataset / "splits.json").exists():
            prepare_events(
                raw / "events.csv",
                dataset,
                profiles=raw / "profiles.csv",
                ddi=raw / "ddi.csv",
                samples="all",
                split=(0.8, 0.1, 0.1),
                seed=42,
            )
    overrides = {k: _value(v) for k, _, v in (item.partition("=") for item in args.set)}
    config = TeacherConfig.from_yaml(args.config, **overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"device {device}" + (f" ({torch.cuda.get_device_name()})" if device == "cuda" else ""))

    started = time.perf_counter()
    run = train_teacher(
        dataset, args.out / "teacher", config, resume=(args.out / "teacher").exists()
    )
    train_wall = time.perf_counter() - started
    teacher = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    features = args.out / "features.safetensors"
    test = predict_teacher(run, dataset, features)
    students = {}
    for name, alpha in (("LEADER(S)", 0.4), ("LEADER(S) without distillation", 0.0)):
        folder = args.out / ("student" if alpha else "student-plain")
        student = StudentConfig.from_dict(
            {"alpha": alpha, "train": {"batch_size": 64, "epochs": 40, "patience": 8, "seed": 42}}
        )
        train_student(dataset, folder, student, features if alpha else None)
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
        students[name] = metrics["test"]["at_threshold"]["prauc"]
    peak = (
        torch.cuda.max_memory_allocated() / 2**30
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    )
    summary = {
        "device": device,
        "teacher_test_prauc": test["all"]["metrics"]["prauc"],
        "teacher_best_val_prauc": teacher["best_val_prauc"],
        "steps": teacher["steps"],
        "train_wall_seconds": round(train_wall, 1),
        "train_tokens_per_second": round(teacher["train_tokens_per_second"], 1),
        "peak_memory_gib": round(peak, 2),
        "students_test_prauc": students,
    }
    print(json.dumps(summary, indent=2))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
