from __future__ import annotations

import numpy as np
import pytest

from leader.data.store import VisitDataset
from leader.errors import LeaderError


def test_round_trip_keeps_everything(tiny_dataset: VisitDataset) -> None:
    assert tiny_dataset.vocab.codes["medication"] == ["m1", "m2", "m3", "m4", "m5"]
    assert tiny_dataset.vocab.name("diagnosis", "d1") == "Hypertension"
    assert tiny_dataset.vocab.name("diagnosis", "d3") == "d3"  # no name: the code itself
    assert tiny_dataset.splits["test"] == ["p2"]
    assert len(tiny_dataset.visits) == 9


def test_samples_all_and_last(tiny_dataset: VisitDataset) -> None:
    train = tiny_dataset.samples("train", mode="all")
    assert [s.sample_id for s in train] == ["p1:v1", "p1:v2", "p1:v3", "p3:v6", "p4:v7", "p6:v9"]
    third = train[2]
    assert [v.visit_id for v in third.history] == ["v1", "v2"]
    assert third.current.medications == ("m1",)
    assert not third.is_single_visit and train[0].is_single_visit
    last = tiny_dataset.samples("train", mode="last")
    assert [s.sample_id for s in last] == ["p1:v3", "p3:v6", "p4:v7", "p6:v9"]


def test_profile_missing_becomes_unknown(tiny_dataset: VisitDataset) -> None:
    assert tiny_dataset.profile_of("p6")["insurance"] == "unknown"
    assert tiny_dataset.profile_of("p1") == {
        "gender": "F",
        "age_band": "60-69",
        "insurance": "Medicare",
    }


def test_ddi_matrix_and_targets(tiny_dataset: VisitDataset) -> None:
    ddi = tiny_dataset.ddi_matrix()
    assert ddi.shape == (5, 5) and ddi[0, 3] == ddi[3, 0] == 1 and ddi.sum() == 4
    y = tiny_dataset.targets(tiny_dataset.samples("test"))
    np.testing.assert_array_equal(y, [[0, 0, 0, 1, 1], [0, 0, 0, 1, 0]])


def test_load_errors_name_the_problem(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LeaderError, match="no dataset directory"):
        VisitDataset.load(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "vocab.json").write_text("{}")
    with pytest.raises(LeaderError, match="missing visits.parquet"):
        VisitDataset.load(tmp_path / "half")
