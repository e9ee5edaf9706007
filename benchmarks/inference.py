"""Inference speed: the teacher LEADER(T) against the student LEADER(S) on the same samples.

    .venv/bin/python benchmarks/inference.py                       # the `leader demo` folders
    .venv/bin/python benchmarks/inference.py --teacher RUN --student RUN --dataset DIR \\
        --samples 64 --threads 2

Prints patients/s for both models on the same test samples (the student's batch repeats
those samples up to --student-batch patients so the clock has something to measure), the
ratio, and the median single-patient latency of each. Targets (issue 4): the student at
least 1,000 times the teacher's throughput and at least 10,000 patients/s on 2 cores.
Without a teacher run (--teacher none) only the student is timed.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from leader.data.store import Sample, VisitDataset
from leader.student import LeaderStudent


def _latency(
    predict: Callable[[Sequence[Sample]], Any], samples: Sequence[Sample], calls: int
) -> float:
    predict(samples[:1])
    times = []
    for i in range(calls):
        start = time.perf_counter()
        predict([samples[i % len(samples)]])
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _throughput(
    predict: Callable[[Sequence[Sample]], Any], samples: Sequence[Sample]
) -> tuple[float, float]:
    """(patients per wall second, patients per CPU second of this process).

    On a shared machine the wall-clock figure depends on the neighbours; the CPU-second
    figure does much less (times the cores gives what an idle machine would reach).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    predict(samples)
    return len(samples) / (time.perf_counter() - wall), len(samples) / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--teacher", default="leader-demo/teacher/run", help="teacher run or 'none'"
    )
    parser.add_argument("--student", default="leader-demo/student/run")
    parser.add_argument("--dataset", default="leader-demo/prepare/dataset")
    parser.add_argument("--samples", type=int, default=64, help="test samples for both models")
    parser.add_argument(
        "--student-batch", type=int, default=20000, help="patients per student batch"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-calls", type=int, default=50)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    dataset = VisitDataset.load(args.dataset)
    student = LeaderStudent.from_pretrained(args.student)
    mode = student.config.sample_mode or dataset.default_sample_mode
    samples = dataset.samples("test", mode)[: args.samples]  # type: ignore[arg-type]
    if not samples:
        raise SystemExit(f"{args.dataset}: no test samples")
    print(f"{len(samples)} test samples of {args.dataset}; torch threads {args.threads}")

    batch = (samples * (args.student_batch // len(samples) + 1))[: args.student_batch]
    student.predict_proba(batch[:1024])  # warm-up
    runs = [_throughput(student.predict_proba, batch) for _ in range(3)]
    student_rate = statistics.median(r[0] for r in runs)
    student_cpu = statistics.median(r[1] for r in runs)
    student_ms = _latency(student.predict_proba, samples, args.latency_calls)
    print(
        f"student: {student.num_parameters():,} parameters; {student_rate:,.0f} patients/s "
        f"(batch of {len(batch):,}; {student_cpu:,.0f} per CPU-second); "
        f"latency {student_ms:.2f} ms per patient"
    )
    if args.teacher == "none" or not Path(args.teacher).exists():
        print("teacher: not timed (no run folder)")
        return

    from leader.teacher import LeaderTeacher

    teacher = LeaderTeacher.from_pretrained(Path(args.teacher))
    teacher.predict_proba(samples[:2])  # warm-up
    teacher_rate, teacher_cpu = _throughput(teacher.predict_proba, samples)
    teacher_ms = _latency(teacher.predict_proba, samples, min(5, args.latency_calls))
    parameters = sum(p.numel() for p in teacher.parameters())
    print(
        f"teacher: {parameters:,} parameters; {teacher_rate:,.2f} patients/s "
        f"(batch of {len(samples)}; {teacher_cpu:,.2f} per CPU-second); "
        f"latency {teacher_ms:.1f} ms per patient"
    )
    print(
        f"ratio: the student serves {student_rate / teacher_rate:,.0f}x the teacher's patients/s "
        f"({student_cpu / teacher_cpu:,.0f}x per CPU-second); single patient "
        f"{teacher_ms / student_ms:,.0f}x faster"
    )


if __name__ == "__main__":
    main()
