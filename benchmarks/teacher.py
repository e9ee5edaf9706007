"""Teacher speed: training tokens/s and inference samples/s, and what length bucketing buys.

Uses the default backbone (SmolLM2-135M through the ``smollm2-135m`` alias) on a dataset
directory: ``--dataset DIR``; else the MIMIC-III demo prepared from ``$LEADER_TEST_DATA``
(``leader prepare mimic3``) when that folder exists; else the tiny test dataset.

    .venv/bin/python benchmarks/teacher.py --steps 4 --batch-size 4 --max-tokens 384

Prints one line per measurement and a JSON summary at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _dataset(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    if args.dataset:
        return Path(args.dataset), "given"
    data = Path(os.environ.get("LEADER_TEST_DATA", ROOT.parent / "shared" / "data"))
    if (data / "mimic-iii-demo").is_dir():
        out = scratch / "mimic3-demo"
        command = [sys.executable, "-m", "leader", "prepare", "mimic3",
                   "--data", str(data / "mimic-iii-demo"), "--out", str(out)]  # fmt: skip
        if (data / "resources").is_dir():
            command += ["--resources", str(data / "resources")]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode == 0:
            return out, "MIMIC-III demo"
        print(f"leader prepare mimic3 failed, using the tiny dataset:\n{done.stderr[-800:]}")
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import make_tiny_dataset

    return make_tiny_dataset().save(scratch / "tiny"), "tiny test dataset"


def _train_speed(teacher: Any, ids: list[list[int]], targets: np.ndarray, batches: list[list[int]],
                 autocast: torch.dtype | None) -> dict[str, float]:  # fmt: skip
    """Timed optimizer steps over ``batches`` (the first one is a warm-up, not timed)."""
    params = [p for p in teacher.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    teacher.train()
    real = padded = samples = 0
    seconds = cpu = 0.0
    for number, rows in enumerate(batches):
        batch = teacher.pad([ids[i] for i in rows])
        labels = torch.from_numpy(targets[rows])
        started, cpu_started = time.perf_counter(), time.process_time()
        with torch.autocast("cpu", dtype=autocast, enabled=autocast is not None):
            out = teacher(**batch, labels=labels)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if number == 0:
            continue
        seconds += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        real += int(batch["attention_mask"].sum())
        padded += int(batch["attention_mask"].numel())
        samples += len(rows)
    return {
        "seconds": seconds,
        "tokens_per_s": real / seconds,
        "samples_per_s": samples / seconds,
        "tokens_per_cpu_s": real / cpu,
        "samples_per_cpu_s": samples / cpu,
        "padding_share": 1 - real / padded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", help="dataset directory (default: MIMIC-III demo or tiny)")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per mode")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=384)
    parser.add_argument("--history-visits", type=int, default=3)
    parser.add_argument("--max-layers", type=int, default=0)
    parser.add_argument("--predict-samples", type=int, default=32)
    parser.add_argument("--precision", default="auto", help="auto, fp32 or bf16 (autocast)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from leader.data.store import VisitDataset
    from leader.teacher import LeaderTeacher, TeacherConfig
    from leader.teacher.model import resolve_precision
    from leader.teacher.train import epoch_batches

    scratch = Path(tempfile.mkdtemp(prefix="leader-bench-"))
    dataset_dir, what = _dataset(args, scratch)
    dataset = VisitDataset.load(dataset_dir)
    config = TeacherConfig(model=args.model, max_tokens=args.max_tokens,
                           history_visits=args.history_visits, max_layers=args.max_layers,
                           precision=args.precision)  # fmt: skip
    started = time.perf_counter()
    teacher = LeaderTeacher.build(config, dataset.vocab)
    load_seconds = time.perf_counter() - started
    samples = dataset.samples("train")
    ids, stats = teacher.encode(samples)
    targets = dataset.targets(samples)
    lengths = [len(i) for i in ids]
    autocast = resolve_precision(config.precision, torch.device("cpu"))
    print(f"dataset: {what} ({dataset_dir}), {len(samples)} train samples; {stats.summary()}")
    print(f"machine load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"backbone {args.model}: loaded in {load_seconds:.1f}s; {torch.get_num_threads()} "
          f"threads; precision {autocast or 'fp32'}")  # fmt: skip

    # Padding over one whole epoch, plain vs bucketed (exact, no timing noise).
    plain_epoch = epoch_batches(lengths, args.batch_size, 0, 0, bucket=False)
    bucket_epoch = epoch_batches(lengths, args.batch_size, 0, 0, bucket=True)

    def padded(batches: list[list[int]]) -> int:
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    epoch_ratio = padded(plain_epoch) / padded(bucket_epoch)
    print(f"one epoch: {sum(lengths)} real tokens; padded to {padded(plain_epoch)} plain, "
          f"{padded(bucket_epoch)} bucketed ({epoch_ratio:.2f}x fewer)")  # fmt: skip

    results: dict[str, Any] = {"dataset": what, "train_samples": len(samples),
                               "mean_prompt_tokens": float(np.mean(lengths)),
                               "epoch_padded_token_ratio": epoch_ratio}  # fmt: skip
    steps = args.steps + 1
    for name, batches in (("plain", plain_epoch[:steps]), ("bucketed", bucket_epoch[:steps])):
        speed = _train_speed(teacher, ids, targets, batches, autocast)
        results[f"train_{name}"] = speed
        print(
            f"train {name:8s}: {speed['tokens_per_s']:7.1f} real tokens/s, "
            f"{speed['samples_per_s']:.2f} samples/s, padding {100 * speed['padding_share']:.0f}%"
            f" ({speed['tokens_per_cpu_s']:.1f} tokens per CPU-second)"
        )
    # Batches differ in content, so compare work rates: real tokens per second.
    gain = results["train_bucketed"]["tokens_per_s"] / results["train_plain"]["tokens_per_s"]
    results["bucketing_gain_tokens_per_s"] = gain
    print(
        f"length bucketing: {gain:.2f}x real training tokens/s on {args.steps} steps; "
        f"{epoch_ratio:.2f}x fewer padded tokens over a whole epoch"
    )

    chosen = ids[: args.predict_samples]
    teacher.predict_ids(chosen[:2], args.batch_size, autocast)  # warm-up
    started, cpu_started = time.perf_counter(), time.process_time()
    teacher.predict_ids(chosen, 16, autocast)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    results["inference_samples_per_cpu_s"] = len(chosen) / cpu
    results["inference_samples_per_s"] = len(chosen) / seconds
    results["inference_tokens_per_s"] = sum(len(i) for i in chosen) / seconds
    print(
        f"inference: {len(chosen) / seconds:.2f} samples/s, "
        f"{results['inference_tokens_per_s']:.0f} tokens/s (batch 16, length-sorted); "
        f"{len(chosen) / cpu:.2f} samples per CPU-second"
    )
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
