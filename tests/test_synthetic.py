"""The synthetic demo cohort: schema, determinism, realistic structure, learnability, CLI."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data import synthetic
from leader.data.synthetic import generate, summary, write
from leader.errors import LeaderError
from leader.metrics import compute


@pytest.fixture(scope="module")
def cohort() -> synthetic.SyntheticCohort:
    return generate(patients=1500, seed=1)


def _digest(folder: Path) -> dict[str, str]:
    return {
        name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
        for name in ("events.csv", "profiles.csv", "ddi.csv", "README.txt")
    }


def test_schema_and_codes(cohort: synthetic.SyntheticCohort) -> None:
    events, profiles = cohort.events, cohort.profiles
    assert tuple(events.columns) == synthetic.EVENT_COLUMNS
    assert tuple(profiles.columns) == synthetic.PROFILE_COLUMNS
    assert tuple(cohort.ddi.columns) == ("atc3_a", "atc3_b")
    assert set(events["kind"]) == {"diagnosis", "procedure", "medication"}
    assert events["code"].str.len().min() > 0 and events["name"].str.len().min() > 0
    assert not events.duplicated(["visit_id", "kind", "code"]).any()
    meds = events.loc[events["kind"] == "medication", "code"]
    assert meds.str.fullmatch(r"[A-Z]\d\d[A-Z]").all()  # ATC level 3
    diagnoses = events.loc[events["kind"] == "diagnosis", "code"]
    assert diagnoses.str.fullmatch(r"(\d{3,5}|V\d{2,4}|E\d{3,4})").all()  # ICD-9, no dots
    assert pd.to_datetime(events["visit_time"], format="%Y-%m-%d %H:%M:%S").notna().all()
    assert set(profiles["patient_id"]) == set(events["patient_id"])
    assert profiles["gender"].isin(["M", "F"]).all()
    assert profiles["language"].isna().mean() > 0.1  # missing, as in MIMIC
    # every visit has at least one code of each kind (so `prepare` keeps it)
    kinds_per_visit = events.groupby("visit_id")["kind"].nunique()
    assert (kinds_per_visit == 3).all()


def test_visits_and_realistic_sizes(cohort: synthetic.SyntheticCohort) -> None:
    events = cohort.events
    visits = events.groupby("patient_id")["visit_id"].nunique()
    assert visits.between(1, 6).all() and visits.max() == 6
    assert 0.6 <= (visits == 1).mean() <= 0.7
    # visits in time order, one time per visit, ids unique to a patient
    per_visit = events.groupby("visit_id").agg(
        patient=("patient_id", "nunique"), times=("visit_time", "nunique")
    )
    assert (per_visit["patient"] == 1).all() and (per_visit["times"] == 1).all()
    first = events.drop_duplicates("visit_id")
    assert first.groupby("patient_id")["visit_time"].is_monotonic_increasing.all()
    stats = summary(cohort)
    assert 8 <= stats["mean_diagnoses_per_visit"] <= 13
    assert 2 <= stats["mean_procedures_per_visit"] <= 5
    assert 10 <= stats["mean_medications_per_visit"] <= 20
    assert 40 <= stats["diagnosis_codes"] and 60 <= stats["medication_codes"]


def test_profile_drives_prevalence(cohort: synthetic.SyntheticCohort) -> None:
    first_visit = cohort.events.merge(cohort.profiles, on="patient_id")
    has = first_visit.groupby("patient_id").agg(
        hypertension=("code", lambda c: "4019" in set(c)),
        prostate=("code", lambda c: "60000" in set(c)),
        gender=("gender", "first"),
        age_band=("age_band", "first"),
    )
    old = has["age_band"].isin(["70-79", "80-89", "90+"])
    young = has["age_band"].isin(["18-29", "30-39", "40-49"])
    assert has.loc[old, "hypertension"].mean() > 1.5 * has.loc[young, "hypertension"].mean()
    assert not has.loc[has["gender"] == "F", "prostate"].any()
    assert has.loc[has["gender"] == "M", "prostate"].any()


def test_chronic_conditions_and_drugs_persist(cohort: synthetic.SyntheticCohort) -> None:
    events = cohort.events
    order = events.drop_duplicates("visit_id")[["patient_id", "visit_id"]]
    order["rank"] = order.groupby("patient_id").cumcount()
    ranked = events.merge(order[["visit_id", "rank"]], on="visit_id")

    def repeat_rate(kind: str, codes: list[str]) -> float:
        """Share of (patient, code) at a first visit that is coded again at the second."""
        rows = ranked[(ranked["kind"] == kind) & ranked["code"].isin(codes)]
        pairs = rows["patient_id"].astype(str) + "|" + rows["code"]
        first = set(pairs[rows["rank"] == 0])
        second = set(pairs[rows["rank"] == 1])
        multi = set(order.loc[order["rank"] == 1, "patient_id"].astype(str))
        at_risk = {pair for pair in first if pair.split("|")[0] in multi}
        return len(at_risk & second) / max(1, len(at_risk))

    chronic = [c.code for c in synthetic.CONDITIONS if c.chronic]
    acute = ["0389", "486", "41071", "5789", "43491", "78039"]
    assert repeat_rate("diagnosis", chronic) > 0.8
    assert repeat_rate("diagnosis", acute) < 0.4
    assert repeat_rate("medication", ["H03A", "N04B", "G04C", "R03B"]) > 0.7


def test_drugs_follow_conditions(cohort: synthetic.SyntheticCohort) -> None:
    events = cohort.events
    visit_codes = events.groupby("visit_id")["code"].agg(set)
    with_pd = visit_codes.map(lambda codes: "3320" in codes)
    given = visit_codes.map(lambda codes: "N04B" in codes)
    assert given[with_pd].mean() > 0.7 and given[~with_pd].mean() < 0.05


def test_ddi_pairs_present_and_avoided(cohort: synthetic.SyntheticCohort) -> None:
    meds = cohort.events[cohort.events["kind"] == "medication"]
    drugs = set(meds["code"])
    assert len(cohort.ddi) >= 15
    assert set(cohort.ddi["atc3_a"]) | set(cohort.ddi["atc3_b"]) <= drugs
    assert (cohort.ddi["atc3_a"] < cohort.ddi["atc3_b"]).all()
    table = pd.crosstab(meds["visit_id"], meds["code"]).clip(upper=1)
    observed = expected = 0.0
    for a, b in cohort.ddi.itertuples(index=False):
        observed += float((table[a] * table[b]).mean())
        expected += float(table[a].mean() * table[b].mean())
    assert observed < 0.7 * expected  # interacting pairs are co-prescribed less than chance


def test_deterministic_same_bytes(tmp_path: Path) -> None:
    write(generate(patients=150, seed=7), tmp_path / "a")
    write(generate(patients=150, seed=7), tmp_path / "b")
    write(generate(patients=150, seed=8), tmp_path / "c")
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["events.csv"] != _digest(tmp_path / "c")["events.csv"]
    # another process with another string-hash seed: still the same bytes
    code = (
        "import sys; from leader.data.synthetic import generate, write; "
        "write(generate(patients=150, seed=7), sys.argv[1])"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "d")], check=True, env=env)
    assert _digest(tmp_path / "d") == _digest(tmp_path / "a")


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(LeaderError, match="--patients"):
        generate(patients=0, seed=0)
    with pytest.raises(LeaderError, match="--seed"):
        generate(patients=5, seed=-1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(LeaderError, match="not a directory"):
        write(generate(patients=5, seed=0), tmp_path / "file")


def test_cli_synth(tmp_path: Path) -> None:
    out = tmp_path / "cohort"
    result = CliRunner().invoke(
        app, ["synth", "--patients", "60", "--seed", "3", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "mean_medications_per_visit" in result.output
    events = pd.read_csv(out / "events.csv", dtype=str)
    assert events["patient_id"].nunique() == 60
    assert list(events.columns) == list(synthetic.EVENT_COLUMNS)
    assert "synthetic" in (out / "README.txt").read_text().lower()
    assert "--seed 3" in (out / "README.txt").read_text()
    again = CliRunner().invoke(app, ["synth", "--patients", "60", "--seed", "3", "--out", str(out)])
    assert again.exit_code == 0
    bad = CliRunner().invoke(app, ["synth", "--patients", "0", "--out", str(out)])
    assert bad.exit_code != 0


def _visit_matrices(
    events: pd.DataFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Multi-hot (diagnoses + procedures) features, medication targets, patient per visit."""
    visit_ids = events["visit_id"].drop_duplicates().to_numpy()
    row = pd.Series(np.arange(visit_ids.size), index=visit_ids)
    is_med = events["kind"] == "medication"
    features = (events.loc[~is_med, "kind"] + ":" + events.loc[~is_med, "code"]).to_numpy()
    feature_codes, feature_col = np.unique(features, return_inverse=True)
    drug_codes, drug_col = np.unique(events.loc[is_med, "code"].to_numpy(), return_inverse=True)
    x = np.zeros((visit_ids.size, feature_codes.size), dtype=np.float32)  # (visits, codes)
    y = np.zeros((visit_ids.size, drug_codes.size), dtype=np.int8)  # (visits, drugs)
    x[row[events.loc[~is_med, "visit_id"]].to_numpy(), feature_col] = 1
    y[row[events.loc[is_med, "visit_id"]].to_numpy(), drug_col] = 1
    patient = events.drop_duplicates("visit_id")["patient_id"].to_numpy()
    return x, y, patient


def test_learned_model_beats_popularity(cohort: synthetic.SyntheticCohort) -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier

    x, y, patient = _visit_matrices(cohort.events)
    patients = np.unique(patient)
    np.random.default_rng(0).shuffle(patients)
    train = np.isin(patient, patients[: int(0.8 * patients.size)])
    seen = y[train].sum(axis=0) > 0  # drugs never given in train cannot be learned
    model = OneVsRestClassifier(LogisticRegression(solver="liblinear"))
    model.fit(x[train], y[train][:, seen])
    learned = np.zeros(y[~train].shape)
    learned[:, seen] = model.predict_proba(x[~train])

    frequency = y[train].mean(axis=0)
    popular_prob = np.tile(frequency, (int((~train).sum()), 1))
    k = int(round(y[train].sum(axis=1).mean()))
    popular_top_k = np.zeros_like(popular_prob)
    popular_top_k[:, np.argsort(-frequency, kind="stable")[:k]] = 1.0

    ours = compute(y[~train], learned)
    by_prob = compute(y[~train], popular_prob)
    by_top_k = compute(y[~train], popular_top_k)
    best_popular_jaccard = max(by_prob["jaccard"], by_top_k["jaccard"])
    best_popular_prauc = max(by_prob["prauc"], by_top_k["prauc"])
    assert ours["prauc"] >= best_popular_prauc + 0.10, (ours, by_prob, by_top_k)
    assert ours["jaccard"] >= best_popular_jaccard + 0.05, (ours, by_prob, by_top_k)


def test_oracle_is_the_ceiling_and_leaves_the_cohort_unchanged(tmp_path: Path) -> None:
    plain = generate(patients=200, seed=3)
    known = generate(patients=200, seed=3, oracle_draws=64)
    assert plain.oracle is None and known.oracle is not None
    assert known.events.equals(plain.events)  # its own random stream
    write(known, tmp_path / "k")
    write(plain, tmp_path / "p")
    assert _digest(tmp_path / "k") == _digest(tmp_path / "p")
    assert (tmp_path / "k" / "oracle.csv").is_file() and not (
        tmp_path / "p" / "oracle.csv"
    ).exists()
    oracle = known.oracle
    assert oracle["probability"].between(0, 1).all()
    # the oracle ranks each visit's drugs far better than popularity, and than a model could
    meds = known.events[known.events["kind"] == "medication"]
    visits = sorted(meds["visit_id"].unique())
    drugs = sorted(meds["code"].unique())
    col, row = {d: i for i, d in enumerate(drugs)}, {v: i for i, v in enumerate(visits)}
    truth = np.zeros((len(visits), len(drugs)))
    truth[meds["visit_id"].map(row), meds["code"].map(col)] = 1
    prob = np.zeros_like(truth)
    kept = oracle[oracle["code"].isin(col)]
    prob[kept["visit_id"].map(row), kept["code"].map(col)] = kept["probability"]
    popular = np.tile(truth.mean(axis=0), (len(visits), 1))
    assert compute(truth, prob)["prauc"] >= compute(truth, popular)["prauc"] + 0.15
    # read back from the file, rows and columns in the caller's order
    read = synthetic.oracle_probabilities(
        tmp_path / "k" / "oracle.csv", [str(v) for v in visits], drugs
    )
    np.testing.assert_allclose(read, prob, atol=1e-4)
    with pytest.raises(LeaderError, match="another cohort"):
        synthetic.oracle_probabilities(tmp_path / "k" / "oracle.csv", ["1"], drugs)
