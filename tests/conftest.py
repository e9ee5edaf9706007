"""Shared fixtures: a tiny hand-built dataset, and the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from leader.data.store import VisitDataset, Vocabulary


@pytest.fixture(scope="session")
def test_data() -> Path:
    """The shared real data (LEADER_TEST_DATA): MIMIC-III demo and drug-code resources."""
    root = os.environ.get("LEADER_TEST_DATA")
    if not root:
        pytest.skip("LEADER_TEST_DATA is not set (CI sets it to ../shared/data)")
    path = Path(root)
    if not (path / "mimic-iii-demo").is_dir():
        pytest.fail(f"LEADER_TEST_DATA={root} has no mimic-iii-demo/ folder")
    return path


def make_tiny_dataset() -> VisitDataset:
    """Six patients, 12 visits, small vocabularies; deterministic, built in memory.

    p1 has 3 visits, p2 2, p3..p6 1 each (first-time patients).
    """
    rows = [
        ("p1", "v1", "2100-01-01", ["d1", "d2"], ["x1"], ["m1", "m2"]),
        ("p1", "v2", "2100-02-01", ["d2", "d3"], ["x2"], ["m2", "m3"]),
        ("p1", "v3", "2100-03-01", ["d1"], ["x1", "x2"], ["m1"]),
        ("p2", "v4", "2101-01-01", ["d4"], ["x3"], ["m4", "m5"]),
        ("p2", "v5", "2101-05-01", ["d4", "d5"], ["x3"], ["m4"]),
        ("p3", "v6", "2102-01-01", ["d1", "d5"], ["x1"], ["m1", "m5"]),
        ("p4", "v7", "2102-01-01", ["d2"], ["x2"], ["m2"]),
        ("p5", "v8", "2103-01-01", ["d3", "d4"], ["x3"], ["m3", "m4"]),
        ("p6", "v9", "2104-01-01", ["d5"], ["x1"], ["m5", "m1"]),
    ]
    visits = pd.DataFrame(
        rows, columns=["patient_id", "visit_id", "time", "diagnoses", "procedures", "medications"]
    )
    visits["time"] = pd.to_datetime(visits["time"])
    profiles = pd.DataFrame(
        {
            "patient_id": ["p1", "p2", "p3", "p4", "p5", "p6"],
            "gender": ["F", "M", "F", "M", "F", "M"],
            "age_band": ["60-69", "70-79", "40-49", "60-69", "80-89", "50-59"],
            "insurance": ["Medicare", "Private", "Medicaid", "Medicare", "Medicare", None],
        }
    )
    vocab = Vocabulary(
        codes={
            "diagnosis": ["d1", "d2", "d3", "d4", "d5"],
            "procedure": ["x1", "x2", "x3"],
            "medication": ["m1", "m2", "m3", "m4", "m5"],
        },
        names={
            "diagnosis": {"d1": "Hypertension", "d2": "Diabetes", "d4": "Heart failure"},
            "procedure": {"x1": "Venous catheter"},
            "medication": {"m1": "beta blocking agents", "m2": "insulins", "m4": "diuretics"},
        },
    )
    return VisitDataset(
        visits=visits,
        profiles=profiles,
        vocab=vocab,
        splits={"train": ["p1", "p3", "p4", "p6"], "val": ["p5"], "test": ["p2"]},
        ddi_pairs=[("m1", "m4"), ("m2", "m5")],
        ddi_source="test",
        stats={"patients": 6, "visits": 9},
        manifest={"source": "test", "options": {"samples": "all"}},
    )


@pytest.fixture()
def tiny_dataset(tmp_path: Path) -> VisitDataset:
    """The tiny dataset, saved to a temporary directory and loaded back."""
    return VisitDataset.load(make_tiny_dataset().save(tmp_path / "tiny"))
