"""Training speed of the student LEADER(S): samples per CPU-second of its training steps.

    .venv/bin/python benchmarks/student_speed.py --dataset data/synth-94k --batch 16 256
    # before/after a change: the same script against another source tree
    PYTHONPATH=/path/to/other/src .venv/bin/python benchmarks/student_speed.py --dataset ...

What `leader student train` spends an epoch on: shuffled batches of the training samples
(``student.train.epoch_batches``), forward, backward and an AdamW step (the shared loop's
optimizer), one torch thread. Encoding the samples (once per run) and validation are left
out. ``--steps`` batches are timed after ``--warmup`` ones, in CPU-seconds
(``time.process_time``): the machine this was written on is shared, and CPU-seconds depend
much less on the neighbours than wall time (with two free cores and two threads, wall-clock
speed is at most twice the figure). Target (issue 13): 3,000 training samples/s at
full-MIMIC-IV scale (126 k training samples, `benchmarks/scale.py --make-cohort 94000`).
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
) -> float:
    """Training samples per CPU-second over about ``samples`` samples at batch size ``batch``."""
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
    done, start = 0, time.process_time()
    while done < samples:
        done += step()
    return done / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="a prepared dataset directory")
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 256])
    parser.add_argument("--samples", type=int, default=6144, help="samples timed per batch size")
    parser.add_argument("--warmup", type=int, default=5, help="batches run before timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--group", action="store_true", help="batches keep a patient's samples together"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    dataset = VisitDataset.load(args.dataset)
    print(f"{len(dataset.samples('train', 'all')):,} training samples, 1 torch thread")
    for batch in args.batch:
        rate = measure(dataset, batch, args.samples, args.warmup, args.seed, args.group)
        print(f"batch {batch:>4}: {rate:,.0f} training samples per CPU-second")


if __name__ == "__main__":
    main()
