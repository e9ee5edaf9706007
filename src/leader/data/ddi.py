"""Drug-drug interaction pairs at the ATC3 level.

Two inputs: a pairs file (``atc3_a,atc3_b``, like the GAMENet / SafeDrug
``ddi_atc3_pairs.csv``), or the GAMENet TWOSIDES recipe: ``drug-DDI.csv`` (columns
``STITCH 1, STITCH 2, Polypharmacy Side Effect, Side Effect Name``, downloaded by the
user) with ``drug-atc.csv`` (PubChem CID -> ATC codes, no header). The recipe keeps the
interactions of the ``top`` *least* frequent side effects (GAMENet takes the tail of a
count-descending list), maps each CID to the ATC3 classes (first 4 characters) of its ATC
codes, and pairs every class of one drug with every class of the other.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd

from leader.data.tables import read_table
from leader.errors import LeaderError


def read_pairs(path: Path) -> list[tuple[str, str]]:
    """Unordered pairs from a two-column CSV with a header; self-pairs dropped."""
    if not path.exists():
        raise LeaderError(f"{path}: DDI pairs file not found")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if frame.shape[1] < 2:
        raise LeaderError(
            f"{path}: a DDI pairs file needs two columns (found: {', '.join(frame.columns)})"
        )
    pairs = {
        tuple(sorted((a.strip(), b.strip())))
        for a, b in zip(frame.iloc[:, 0], frame.iloc[:, 1], strict=True)
        if a.strip() and b.strip() and a.strip() != b.strip()
    }
    return sorted((a, b) for a, b in pairs)


def read_drug_atc(path: Path) -> dict[str, set[str]]:
    """PubChem CID -> ATC3 classes from ``drug-atc.csv`` (no header, CID then ATC codes)."""
    if not path.exists():
        raise LeaderError(f"{path}: CID -> ATC file (drug-atc.csv) not found")
    out: dict[str, set[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.reader(handle):
            if len(row) >= 2:
                out.setdefault(row[0].strip(), set()).update(
                    code.strip()[:4] for code in row[1:] if code.strip()
                )
    return out


def twosides_pairs(drug_ddi: Path, drug_atc: Path, top: int = 40) -> list[tuple[str, str]]:
    """The GAMENet recipe (see the module docstring); pairs as sorted ATC3 tuples."""
    frame = read_table(
        drug_ddi,
        ["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"],
        text=["STITCH 1", "STITCH 2", "Polypharmacy Side Effect", "Side Effect Name"],
    )
    effects = (
        frame.groupby(["polypharmacy side effect", "side effect name"])
        .size()
        .reset_index(name="count")
        .sort_values("count", ascending=False, kind="stable")
    )
    rare = set(effects.tail(top)["side effect name"])
    kept = frame[frame["side effect name"].isin(rare)][["stitch 1", "stitch 2"]].drop_duplicates()
    cid_atc = read_drug_atc(drug_atc)
    pairs: set[tuple[str, str]] = set()
    for a, b in zip(kept["stitch 1"], kept["stitch 2"], strict=True):
        for atc_a in cid_atc.get(a, ()):
            for atc_b in cid_atc.get(b, ()):
                if atc_a != atc_b:
                    pairs.add((min(atc_a, atc_b), max(atc_a, atc_b)))
    return sorted(pairs)
