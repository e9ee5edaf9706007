"""Speed of `leader synth`: generate and write N synthetic patients, median of R repeats.

    .venv/bin/python benchmarks/synth.py --patients 2000 20000 --repeats 3

Target (issue 2): 2,000 patients in a few seconds, time linear in N.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from leader.data.synthetic import generate, summary, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for patients in args.patients:
        generate_s, write_s = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            cohort = generate(patients=patients, seed=args.seed)
            middle = time.perf_counter()
            with tempfile.TemporaryDirectory() as folder:
                write(cohort, Path(folder))
            generate_s.append(middle - start)
            write_s.append(time.perf_counter() - middle)
        stats = summary(cohort)
        print(
            f"patients={patients:>6} visits={stats['visits']:>6} events={stats['events']:>8} "
            f"generate={statistics.median(generate_s):.2f}s "
            f"write={statistics.median(write_s):.2f}s"
        )


if __name__ == "__main__":
    main()
