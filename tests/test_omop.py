"""`leader prepare omop`: CDM 5.4 tables from files, Parquet, SQLite and a real PostgreSQL.

The PostgreSQL test starts its own server (initdb in a temporary folder, a Unix socket,
no TCP) and skips only when the server binaries are not installed (`make setup`
installs them through scripts/install-postgres.sh).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.prepare import prepare_omop
from leader.data.sources import omop_tables
from leader.data.sources.omop import read_omop
from leader.data.sources.omop_tables import DatabaseTables
from leader.data.store import VisitDataset
from leader.errors import LeaderError
from omop_fixture import omop_frames, typed, write_files, write_sqlite

COLUMNS = ["patient_id", "visit_id", "time", "diagnoses", "procedures", "medications"]


def _visits(ds: VisitDataset) -> list[tuple[object, ...]]:
    frame = ds.visits[COLUMNS].sort_values("visit_id")
    return [
        (p, v, str(t), list(d), list(x), list(m))
        for p, v, t, d, x, m in frame.itertuples(index=False)
    ]


def _profiles(ds: VisitDataset) -> list[dict[str, str]]:
    return ds.profiles.astype(str).sort_values("patient_id").to_dict("records")


@pytest.fixture()
def omop_dir(tmp_path: Path) -> Path:
    return write_files(tmp_path / "omop")


def test_omop_rules_from_files(omop_dir: Path, tmp_path: Path) -> None:
    ds = prepare_omop(tmp_path / "out", data=omop_dir, split=(1.0, 0.0, 0.0))
    assert _visits(ds) == [
        (
            "1",
            "100",
            "2020-01-10 08:00:00",
            ["201826", "320128"],
            ["4230911"],
            ["40163924", "19078461"],
        ),
        # No start datetime: the start date.
        ("1", "101", "2021-06-01 00:00:00", ["201826"], ["4230911"], ["40163924"]),
        ("2", "200", "2019-05-05 10:00:00", ["320128"], ["2108115"], ["19078461", "1112807"]),
        # No visit_occurrence row: dated by its earliest event (the procedure's datetime).
        ("3", "300", "2022-03-02 23:30:00", ["4329847"], ["4336464"], ["40163924", "999999"]),
    ]
    stats = ds.stats
    assert stats["visit_time_kind"] == "datetime"
    assert stats["visits_without_visit_occurrence_row"] == 1
    assert stats["visits_dated_from_events"] == 1
    assert stats["visit_occurrence_rows_without_events"] == 1  # visit 400
    assert stats["condition_occurrence_rows_without_visit"] == 1
    assert stats["condition_occurrence_rows_unmapped_concept"] == 1
    assert stats["drug_exposure_rows_unmapped_concept"] == 1
    # Names from CONCEPT.csv (Athena: tab-separated, a quote inside a name).
    assert ds.vocab.name("diagnosis", "320128") == 'Essential hypertension "primary"'
    assert ds.vocab.name("medication", "1112807") == "aspirin"
    # Profile: concept names, else the source value (race 0); age band at the first visit.
    assert ds.profile_of("1") == {
        "gender": "FEMALE",
        "race": "White",
        "ethnicity": "Not Hispanic or Latino",
        "age_band": "60-69",
    }
    assert ds.profile_of("2")["race"] == "Other"
    assert ds.profile_of("2")["age_band"] == "30-39"  # born 1980, month unknown; 2019 visit


def test_omop_drug_levels(omop_dir: Path, tmp_path: Path) -> None:
    ingredient = prepare_omop(tmp_path / "a", data=omop_dir, drug_level="ingredient")
    medications = ingredient.visits.set_index("visit_id")["medications"]
    assert medications["100"] == ["1503297", "1308216"]
    assert medications["300"] == ["1503297"]  # 999999 has no ingredient
    assert ingredient.vocab.name("medication", "1503297") == "metformin"
    assert ingredient.stats["drug_exposure_rows_without_ingredient"] == 1
    ddi = tmp_path / "ddi.csv"
    pd.DataFrame({"atc3_a": ["A10B"], "atc3_b": ["C09A"]}).to_csv(ddi, index=False)
    atc3 = prepare_omop(tmp_path / "b", data=omop_dir, drug_level="atc3", ddi=ddi)
    medications = atc3.visits.set_index("visit_id")["medications"]
    assert medications["100"] == ["A10B", "C09A"]  # not the ATC 4th level A10BA
    assert medications["200"] == ["C09A", "B01A", "N02B"]  # aspirin sits in two classes
    assert atc3.stats["drug_exposure_rows_with_several_atc3"] == 1
    assert atc3.ddi_pairs == [("A10B", "C09A")]
    assert atc3.vocab.name("medication", "C09A") == "ACE INHIBITORS, PLAIN"


def test_omop_roll_up_needs_concept_ancestor(omop_dir: Path, tmp_path: Path) -> None:
    (omop_dir / "CONCEPT_ANCESTOR.csv").unlink()
    with pytest.raises(LeaderError, match="needs the concept_ancestor table"):
        prepare_omop(tmp_path / "out", data=omop_dir, drug_level="atc3")
    # The concept level does not need it.
    prepare_omop(tmp_path / "out", data=omop_dir)


def test_omop_without_visit_occurrence_dates_every_visit_by_events(
    omop_dir: Path, tmp_path: Path
) -> None:
    (omop_dir / "visit_occurrence.csv").unlink()
    ds = prepare_omop(tmp_path / "out", data=omop_dir)
    times = ds.visits.set_index("visit_id")["time"].astype(str)
    assert times["100"] == "2020-01-10 00:00:00"  # earliest event date
    assert ds.stats["visits_dated_from_events"] == 4


def test_omop_parquet_tables(omop_dir: Path, tmp_path: Path) -> None:
    expected = _visits(prepare_omop(tmp_path / "a", data=omop_dir))
    frames = typed(omop_frames())
    (omop_dir / "drug_exposure.csv.gz").unlink()
    frames["drug_exposure"].to_parquet(omop_dir / "drug_exposure.parquet", index=False)
    (omop_dir / "visit_occurrence.csv").unlink()
    frames["visit_occurrence"].to_parquet(omop_dir / "visit_occurrence.parquet", index=False)
    assert _visits(prepare_omop(tmp_path / "b", data=omop_dir)) == expected


def test_omop_sqlite_reads_only_needed_columns_in_chunks(
    omop_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlalchemy as sa

    expected = prepare_omop(tmp_path / "a", data=omop_dir, drug_level="atc3")
    monkeypatch.setattr(omop_tables, "CHUNK_ROWS", 2)
    monkeypatch.setattr(omop_tables, "IN_LIST", 3)
    tables = DatabaseTables(write_sqlite(tmp_path / "cdm.sqlite"))
    statements: list[str] = []
    sa.event.listen(tables.engine, "before_cursor_execute", lambda *a: statements.append(str(a[2])))
    raw = read_omop(tables, "atc3")
    assert raw.visits["visit_id"].tolist() == ["100", "101", "200", "300"]
    selects = [s for s in statements if s.lstrip().upper().startswith("SELECT")]
    assert selects and not any("*" in s for s in selects)
    assert not any("sig" in s.split("FROM")[0] for s in selects)  # unused columns unread
    assert sum("concept_ancestor" in s for s in selects) >= 2  # ids sent in IN lists of 3
    via_cli = tmp_path / "b"
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "omop",
            "--db",
            f"sqlite:///{tmp_path / 'cdm.sqlite'}",
            "--drug-level",
            "atc3",
            "--out",
            str(via_cli),
        ],
    )
    assert result.exit_code == 0, result.output
    ds = VisitDataset.load(via_cli)
    assert _visits(ds) == _visits(expected)
    assert _profiles(ds) == _profiles(expected)


def test_omop_needs_exactly_one_source(tmp_path: Path) -> None:
    with pytest.raises(LeaderError, match="exactly one of --data DIR or --db URL"):
        prepare_omop(tmp_path / "out")
    with pytest.raises(LeaderError, match="not a database URL|no SQLAlchemy driver"):
        prepare_omop(tmp_path / "out", db="nosuchdb://x")


# ----------------------------------------------------------------------------- PostgreSQL


def _server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else None


def _as_server_user(root: Path) -> list[str]:
    """initdb refuses root: run the server as 'postgres' (or 'nobody') when we are root."""
    if os.geteuid() != 0:
        return []
    for user in ("postgres", "nobody"):
        try:
            entry = pwd.getpwnam(user)
        except KeyError:
            continue
        for path in [root, *root.rglob("*")]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return ["runuser", "-u", user, "--"]
    pytest.skip("running as root with no 'postgres' or 'nobody' user to run PostgreSQL")


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) not installed; `make setup` "
            "installs them (scripts/install-postgres.sh)"
        )
    root = Path(tempfile.mkdtemp(prefix="leader-pg-"))
    (root / "socket").mkdir()
    run_as = _as_server_user(root)
    data, socket = root / "data", root / "socket"
    try:
        subprocess.run(
            [*run_as, initdb, "-D", str(data), "-U", "leader", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
            timeout=120,
        )
        subprocess.run(
            [
                *run_as,
                pg_ctl,
                "-D",
                str(data),
                "-l",
                str(root / "server.log"),
                "-w",
                "-t",
                "60",
                "-o",
                f"-k {socket} -c listen_addresses=''",
                "start",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
        yield f"postgresql+psycopg://leader@/postgres?host={socket}"
    finally:
        subprocess.run(
            [*run_as, pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # about 10 s: initdb, start, load, stop
def test_omop_postgresql(postgres_url: str, omop_dir: Path, tmp_path: Path) -> None:
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE SCHEMA cdm"))
    for name, frame in typed(omop_frames()).items():
        frame.to_sql(name, engine, schema="cdm", index=False)
    engine.dispose()
    expected = prepare_omop(tmp_path / "files", data=omop_dir, drug_level="atc3")
    out = tmp_path / "pg"
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "omop",
            "--db",
            postgres_url,
            "--schema",
            "cdm",
            "--drug-level",
            "atc3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    ds = VisitDataset.load(out)
    assert _visits(ds) == _visits(expected)
    assert _profiles(ds) == _profiles(expected)
    assert ds.stats["visits_dated_from_events"] == 1
    assert ds.manifest["options"]["db"].endswith("schema cdm")
    with pytest.raises(LeaderError, match="table condition_occurrence not found.*--schema"):
        prepare_omop(tmp_path / "x", db=postgres_url, schema="public")


def test_omop_minimal_columns(tmp_path: Path) -> None:
    """Only the columns the rules need; upper-case names, as some exports write them."""
    frames = omop_frames()
    frames["person"] = frames["person"][["person_id", "year_of_birth", "gender_concept_id"]]
    frames["visit_occurrence"] = frames["visit_occurrence"][
        ["visit_occurrence_id", "person_id", "visit_start_date"]
    ]
    for name, concept in (
        ("condition_occurrence", "condition_concept_id"),
        ("procedure_occurrence", "procedure_concept_id"),
        ("drug_exposure", "drug_concept_id"),
    ):
        frame = frames[name][["person_id", "visit_occurrence_id", concept]]
        frames[name] = frame.rename(columns=str.upper)
    del frames["concept_ancestor"]
    ds = prepare_omop(tmp_path / "out", data=write_files(tmp_path / "omop", frames))
    times = ds.visits.set_index("visit_id")["time"].astype(str).to_dict()
    # Visit 300 has no visit_occurrence row and its events no dates: dropped, and counted.
    assert times == {"100": "2020-01-10", "101": "2021-06-01", "200": "2019-05-05"}
    assert ds.stats["visit_time_kind"] == "date"
    step = next(s for s in ds.stats["funnel"] if s["rule"] == "visit time missing or unparseable")
    assert step["visits_removed"] == 1
    assert ds.profile_of("2") == {
        "gender": "MALE",
        "race": "unknown",
        "ethnicity": "unknown",
        "age_band": "30-39",
    }
