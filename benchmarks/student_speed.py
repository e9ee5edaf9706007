"""Training speed of the student LEADER(S): samples per second of its training steps.

    .venv/bin/python benchmarks/student_speed.py --dataset data/synth-94k --batch 16 256
    .venv/bin/python benchmarks/student_speed.py --dataset data/synth-94k --batch 256 --threads 2
    # before/after a change: the same script against another source tree
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/student_speed.py --dataset ...

What `leader student train` spends an epoch on: batches of the training samples as
``student.train.epoch_batches`` makes them (each patient's samples together, as training
does by default; ``--no-group`` shuffles samples one by one), forward, backward and an AdamW
step (the shared loop's optimizer), ``--threads`` torch threads (default 1, as the demo
trains). Encoding the samples (once per run) and validation are left out. About
``--samples`` samples are timed after ``--warmup`` batches, both in wall-clock seconds and
in CPU-seconds (``time.process_time``, all threads): on a shared machine CPU-seconds depend
less on the neighbours. Target (issue 13): 3,000 training samples/s at full-MIMIC-IV scale
(126 k training samples, `benchmarks/scale.py --make-cohort 94000`) on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from leader.data.store import VisitDataset
from leader.student.data import ProfileVocab
from leader.student.model import LeaderStudent, StudentConfig
from leader.student.train import epoch_batches


def measure(
    dataset: VisitDataset, batch: int, samples: int, warmup: int, seed: int, group: bool
) -> tuple[float, float]:
    """(samples per wall-second, per CPU-second) over about ``samples`` samples at batch
    size ``batch``."""
    torch.manual_seed(seed)
    train = dataset.samples("train", "all")
    fields = [c for c in dataset.profiles.columns if c != "patient_id"]
    model = LeaderStudent(StudentConfig(), dataset.vocab, ProfileVocab.build(train, fields), 0)
    encoded = model.encode(train)
    # As leader.training.fit makes it (foreach: this tree's loop; an older one used the
    # per-parameter default, FOREACH=0 to time that).
    foreach = os.environ.get("FOREACH", "1") == "1"
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.0, foreach=foreach)
    batches = epoch_batches(encoded, batch, group)(np.random.default_rng(seed))
    model.train()

    def step() -> int:
        data = next(batches)
        optimizer.zero_grad(set_to_none=True)
        loss = model(data).loss
        assert loss is not None
        loss.backward()
        optimizer.step()
        return data.size

    for _ in range(warmup):
        step()
    done, wall, cpu = 0, time.perf_counter(), time.process_time()
    while done < samples:
        done += step()
    return done / (time.perf_counter() - wall), done / (time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a prepared dataset directory")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--samples", type=int, default=6144, help="samples timed per batch size")
    parser.add_argument("--warmup", type=int, default=5, help="batches run before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument(
        "--no-group", dest="group", action="store_false",
        help="shuffle samples one by one (group_patients: false)",
    )  # fmt: skip
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = VisitDataset.load(args.dataset)
    print(
        f"{len(dataset.samples('train', 'all')):,} training samples, {args.threads} torch "
        f"thread(s), patients {'grouped' if args.group else 'not grouped'}"
    )
    for batch in args.batch:
        wall, cpu = measure(dataset, batch, args.samples, args.warmup, args.seed, args.group)
        print(f"batch {batch:>4}: {wall:,.0f} training samples/s, {cpu:,.0f} per CPU-second")


if __name__ == "__main__":
    main()
