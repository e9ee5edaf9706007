"""Visit times of every kind (dates, zoned datetimes, numbers) and the empty-cohort error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.prepare import prepare_events
from leader.data.store import VisitDataset
from leader.data.times import parse_visit_times
from leader.errors import LeaderError


def _events(visits: list[tuple[str, str, str]]) -> pd.DataFrame:
    """One diagnosis, procedure and drug per (patient, visit, time)."""
    rows = []
    for patient, visit, time in visits:
        for kind, code in (("diagnosis", "D1"), ("procedure", "P1"), ("medication", "M1")):
            rows.append((patient, visit, time, kind, code))
    return pd.DataFrame(rows, columns=["patient_id", "visit_id", "visit_time", "kind", "code"])


# ----------------------------------------------------------------------------- the parser


@pytest.mark.parametrize(
    ("values", "kind", "parsed"),
    [
        (["2022-07-20", "2021-01-31"], "date", ["2022-07-20 00:00:00", "2021-01-31 00:00:00"]),
        (
            ["2022-07-20 10:00", "2022-07-20"],
            "datetime",
            ["2022-07-20 10:00:00", "2022-07-20 00:00:00"],
        ),
        # Zones are converted to UTC, then dropped.
        (
            ["2022-07-20T07:13:55Z", "2022-07-20T09:13:55+02:00", "2022-07-20T02:13:55-0500"],
            "datetime",
            ["2022-07-20 07:13:55"] * 3,
        ),
        (["07/20/2022 10:00"], "datetime", ["2022-07-20 10:00:00"]),
        (["10", "9", "-1440", ""], "number", ["10", "9", "-1440", "<NA>"]),
        (["1.5", "2"], "number", ["1.5", "2.0"]),
    ],
)
def test_kinds(values: list[str], kind: str, parsed: list[str]) -> None:
    times = parse_visit_times(pd.Series(values), "t.csv")
    assert times.kind == kind
    assert [str(v) for v in times.values] == parsed


def test_unparseable_values_become_missing() -> None:
    times = parse_visit_times(pd.Series(["2020-01-01", "someday", None, "2020-13-45"]), "t")
    assert times.kind == "date" and times.values.isna().tolist() == [False, True, True, True]


def test_mixed_kinds_name_rows_and_values() -> None:
    with pytest.raises(LeaderError) as error:
        parse_visit_times(pd.Series(["2020-01-01", "3", "2020-02-01", "4"]), "e.csv: visit_time")
    message = str(error.value)
    assert message.startswith("e.csv: visit_time: visit times mix numbers")
    assert "row 2: '3'" in message and "row 4: '4'" in message and "row 1: '2020-01-01'" in message
    with pytest.raises(LeaderError, match=r"with a time zone \(row 1: .*without one \(row 2"):
        parse_visit_times(pd.Series(["2020-01-01T10:00Z", "2020-01-01 10:00"]), "e.csv")


# ----------------------------------------------------------------------------- prepare events


def test_numeric_visit_times_sort_numerically(tmp_path: Path) -> None:
    # eICU-style order numbers / offsets: 10 comes after 9, -5 first.
    _events([("a", "v10", "10"), ("a", "v9", "9"), ("a", "vneg", "-5"), ("b", "w", "0")]).to_csv(
        tmp_path / "events.csv", index=False
    )
    ds = prepare_events(tmp_path / "events.csv", tmp_path / "out")
    assert [v.visit_id for v in ds.patient_visits("a")] == ["vneg", "v9", "v10"]
    assert ds.stats["visit_time_kind"] == "number" and ds.manifest["visit_time_kind"] == "number"
    again = VisitDataset.load(tmp_path / "out")
    assert again.visits["time"].dtype.kind == "i"
    assert [v.time for v in again.patient_visits("a")] == ["-5", "9", "10"]
    result = CliRunner().invoke(app, ["stats", str(tmp_path / "out")])
    assert result.exit_code == 0 and "visit_time_kind" in result.output


def test_fhir_times_with_zones(tmp_path: Path) -> None:
    # Synthea / FHIR exports: ISO 8601 with 'Z' or an offset.
    _events(
        [
            ("a", "v2", "2022-07-20T07:13:55Z"),
            ("a", "v1", "2022-07-20T08:00:00+02:00"),  # 06:00 UTC: the first visit
            ("b", "w", "2021-01-01T00:00:00-05:00"),
        ]
    ).to_csv(tmp_path / "events.csv", index=False)
    ds = prepare_events(tmp_path / "events.csv", tmp_path / "out")
    assert [(v.visit_id, v.time) for v in ds.patient_visits("a")] == [
        ("v1", "2022-07-20 06:00:00"),
        ("v2", "2022-07-20 07:13:55"),
    ]
    assert ds.stats["visit_times_converted_to_utc"] == 3
    again = VisitDataset.load(tmp_path / "out")
    assert again.patient_visits("b")[0].time == "2021-01-01 05:00:00"


def test_zoned_parquet_timestamps(tmp_path: Path) -> None:
    events = _events([("a", "v1", ""), ("a", "v2", "")])
    events["visit_time"] = pd.to_datetime(
        ["2022-01-01T12:00Z"] * 3 + ["2022-01-01T11:00-02:00"] * 3, utc=True
    )
    events.to_parquet(tmp_path / "events.parquet")
    ds = prepare_events(tmp_path / "events.parquet", tmp_path / "out")
    assert [v.time for v in ds.patient_visits("a")] == [
        "2022-01-01 12:00:00",
        "2022-01-01 13:00:00",
    ]


def test_mixed_kinds_in_events_is_an_error_with_rows(tmp_path: Path) -> None:
    _events([("a", "v1", "2020-01-01"), ("a", "v2", "7")]).to_csv(
        tmp_path / "events.csv", index=False
    )
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "events",
            "--events",
            str(tmp_path / "events.csv"),
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert result.exit_code != 0
    with pytest.raises(LeaderError, match=r"events.csv: column visit_time: .*row 4: '7'"):
        prepare_events(tmp_path / "events.csv", tmp_path / "out")


def test_empty_cohort_names_the_rule_that_emptied_it(tmp_path: Path) -> None:
    _events([("a", "v1", "someday"), ("b", "v2", "never")]).to_csv(
        tmp_path / "events.csv", index=False
    )
    with pytest.raises(LeaderError) as error:
        prepare_events(tmp_path / "events.csv", tmp_path / "out")
    message = str(error.value)
    assert "the rule 'visit time missing or unparseable' removed every remaining visit" in message
    assert "  visits read: 2 visits, 2 patients" in message
    assert "visit time missing or unparseable: -2 visits, -2 patients -> 0 visits" in message
    assert "after top-k" not in message


def test_empty_cohort_through_the_cli_prints_the_funnel(tmp_path: Path) -> None:
    events = _events([("a", "v1", "2020-01-01"), ("b", "v2", "2020-01-02")])
    events[events["kind"] != "medication"].to_csv(tmp_path / "events.csv", index=False)
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "leader",
            "prepare",
            "events",
            "--events",
            str(tmp_path / "events.csv"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith(
        "error: the rule 'visit has no medication (after top-k)' removed every remaining visit"
    )
    assert "visit has no procedure (after top-k): -0 visits" in completed.stderr
