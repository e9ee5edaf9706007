"""Probability calibration (leader.calibration): metrics, the maps, the selection rule,
the file beside the model, and its use by recommend, evaluate and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from leader.calibration import (
    CALIBRATION,
    Calibrator,
    brier,
    ece,
    fit_calibration,
    fit_isotonic,
    fit_platt,
    fit_temperature,
    read_calibration,
    reliability,
    select_method,
    write_calibration,
)
from leader.errors import LeaderError
from test_serve_fixtures import trained_run


def _population(n: int, drugs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """True probabilities and labels drawn from them."""
    rng = np.random.default_rng(seed)
    z = rng.normal(-1.0, 1.5, (n, drugs))
    p = 1 / (1 + np.exp(-z))
    return p, rng.random((n, drugs)) < p


def test_ece_and_brier_by_hand() -> None:
    truth = np.array([[1, 0], [0, 0]])
    prob = np.array([[0.9, 0.1], [0.3, 0.05]])
    # Bins of width 1/15: 0.9 alone (gap 0.1), 0.3 alone (0.3), 0.1 and 0.05 together
    # (bin 1 holds 0.1, bin 0 holds 0.05: gaps 0.1 and 0.05). ECE = (0.1+0.3+0.1+0.05)/4.
    assert ece(truth, prob) == pytest.approx(0.55 / 4)
    assert brier(truth, prob) == pytest.approx((0.01 + 0.01 + 0.09 + 0.0025) / 4)
    points = reliability(truth, prob, bins=2)
    assert points["count"] == [3, 1] and points["prob_true"] == [0.0, 1.0]


def test_a_calibrated_model_has_small_ece() -> None:
    p, y = _population(4000, 10, 0)
    assert ece(y, p) < 0.02
    assert ece(y, p**0.3) > 0.2  # under-confident: far off


def test_temperature_recovers_an_overconfident_model() -> None:
    p, y = _population(5000, 8, 1)
    z = np.log(p) - np.log1p(-p)
    sharp = 1 / (1 + np.exp(-2.5 * z))  # logits 2.5x too large
    fitted = fit_temperature(y, sharp)
    assert fitted.temperature == pytest.approx(2.5, rel=0.1)
    assert ece(y, fitted.apply(sharp)) < ece(y, sharp) / 3


def test_platt_and_isotonic_match_scikit_learn() -> None:
    from sklearn.isotonic import IsotonicRegression
    from sklearn.linear_model import LogisticRegression

    p, y = _population(600, 3, 2)
    platt = fit_platt(y, p)
    iso = fit_isotonic(y, p)
    assert platt.own_maps == iso.own_maps == 3
    z = np.log(np.clip(p, 1e-6, 1 - 1e-6)) - np.log1p(-np.clip(p, 1e-6, 1 - 1e-6))
    for j in range(3):
        lr = LogisticRegression(C=1.0).fit(z[:, [j]], y[:, j])
        assert np.allclose(platt.apply(p)[:, j], lr.predict_proba(z[:, [j]])[:, 1], atol=1e-6)
        ir = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(p[:, j], y[:, j])
        probe = np.linspace(-0.1, 1.1, 50)
        grid = np.tile(probe[:, None], (1, 3))
        assert np.allclose(iso.apply(grid)[:, j], ir.predict(probe))


def test_rare_drugs_share_one_map() -> None:
    p, y = _population(300, 4, 3)
    y[:, 2] = False
    y[:3, 2] = True  # 3 visits with drug 2: below MIN_CLASS
    iso = fit_isotonic(y, p)
    platt = fit_platt(y, p)
    assert iso.own_maps == platt.own_maps == 3
    assert iso.steps[2] == fit_isotonic(y.ravel()[:, None], p.ravel()[:, None]).steps[0]


def test_selection_prefers_a_fitted_map_for_a_miscalibrated_model() -> None:
    p, y = _population(1500, 6, 4)
    distorted = p**2.5  # far too low for every drug
    groups = [f"p{i // 3}" for i in range(1500)]
    scores = select_method(y, distorted, groups)
    assert set(scores) == {"none", "temperature", "platt", "isotonic"}
    assert scores["none"]["brier"] > scores["temperature"]["brier"] + scores["none"]["se"]
    fitted = fit_calibration(y, distorted, groups)
    assert fitted.method != "none"
    fresh_p, fresh_y = _population(1500, 6, 5)
    assert brier(fresh_y, fitted.apply(fresh_p**2.5)) < brier(fresh_y, fresh_p**2.5)
    # Per-drug distortions are beyond one temperature: a per-drug map wins.
    mixed = np.stack([p[:, j] ** e for j, e in enumerate([0.3, 1, 3, 0.5, 2, 1])], axis=1)
    assert fit_calibration(y, mixed, groups).method in ("platt", "isotonic")


def test_one_standard_error_rule_prefers_the_simpler_map() -> None:
    from leader.calibration import one_se_choice

    close = {
        "none": {"brier": 0.1010, "se": 0.0020},  # within one SE of the best: chosen
        "temperature": {"brier": 0.1005, "se": 0.0010},
        "platt": {"brier": 0.1000, "se": 0.0},
        "isotonic": {"brier": 0.1003, "se": 0.0005},
    }
    assert one_se_choice(close) == "none"
    close["none"]["se"] = 0.0005
    assert one_se_choice(close) == "temperature"
    # A well-calibrated model on plenty of data keeps its own probabilities or one T.
    p, y = _population(2000, 5, 9)
    assert fit_calibration(y, p, [str(i // 2) for i in range(2000)]).method in (
        "none",
        "temperature",
    )


def test_too_few_patients_keep_the_model_probabilities() -> None:
    p, y = _population(5, 3, 6)
    fitted = fit_calibration(y, p, ["p1"] * 5)
    assert fitted.method == "none" and np.array_equal(fitted.apply(p), p)


def test_file_round_trip_and_bad_files(tmp_path: Path) -> None:
    p, y = _population(400, 4, 7)
    for method, fitter in (("platt", fit_platt), ("isotonic", fit_isotonic)):
        fitted = fit_calibration(y, p, [str(i) for i in range(400)])
        fitted.calibrator = fitter(y, p)
        write_calibration(tmp_path, fitted)
        loaded = read_calibration(tmp_path)
        assert loaded is not None and loaded.method == method
        assert np.allclose(loaded.apply(p), fitted.apply(p))
    assert read_calibration(tmp_path / "nowhere") is None
    (tmp_path / CALIBRATION).write_text(json.dumps({"calibrator": {"method": "magic"}}))
    with pytest.raises(LeaderError, match="calibration.json: not a valid calibration file"):
        read_calibration(tmp_path)
    (tmp_path / CALIBRATION).write_text("{not json")
    with pytest.raises(LeaderError, match="leader calibrate"):
        read_calibration(tmp_path)


def test_apply_refuses_the_wrong_width() -> None:
    with pytest.raises(ValueError, match="for 2 drugs"):
        Calibrator("platt", slopes=[1.0, 1.0], intercepts=[0.0, 0.0]).apply(np.zeros((3, 4)))


# ------------------------------------------------------------------ on a trained run
@pytest.fixture()
def student_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory)


def test_student_training_writes_a_calibration(student_run: Path) -> None:
    calibration = read_calibration(student_run)
    assert calibration is not None and calibration.conformal is not None
    assert calibration.split == "val" and calibration.visits == 1  # the tiny dataset: p5


def test_old_runs_without_the_file_recommend_as_before(student_run: Path, tmp_path: Path) -> None:
    import shutil

    from leader.recommend import Recommender, load_model

    old = tmp_path / "old"
    shutil.copytree(student_run, old)
    (old / CALIBRATION).unlink()
    patient = {"visits": [{"diagnoses": ["d1"], "procedures": ["x1"]}]}
    [before] = Recommender(load_model(old)).recommend([patient])
    [now] = Recommender(load_model(student_run)).recommend([patient])
    assert before == now  # method "none" on one validation visit: same answer
    assert "calibration" not in before and "score" not in before["ranked"][0]
    with pytest.raises(LeaderError, match="leader calibrate"):
        Recommender(load_model(old)).recommend([patient], miss_rate=0.1)


def test_evaluate_reports_calibration_and_conformal(student_run: Path) -> None:
    from leader.evaluate import evaluate_run, format_table

    report = evaluate_run(student_run, student_run.parent / "tiny", efficiency=False)
    section = report["calibration"]
    assert section["source"] == "calibration.json"
    assert set(section["test"]["before"]) == {"ece", "brier"}
    assert [row["alpha"] for row in section["conformal"]] == [0.05, 0.1, 0.2]
    assert all(row["full_set"] for row in section["conformal"])  # n = 1 calibration visit
    assert "calibration: none" in format_table(report)


def test_cli_calibrate_a_baseline(student_run: Path, tmp_path: Path) -> None:
    from leader.baselines.registry import create
    from leader.cli import app
    from leader.data.store import VisitDataset

    dataset = VisitDataset.load(student_run.parent / "tiny")
    model = create("popularity")
    model.fit(dataset)  # type: ignore[call-arg]
    model.save_pretrained(tmp_path / "pop")
    runner = CliRunner()
    args = ["calibrate", "--run", str(tmp_path / "pop"), "--dataset", str(dataset.path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pop" / CALIBRATION).is_file()
    refused = runner.invoke(app, [*args, "--split", "test"])
    assert refused.exit_code != 0


def test_report_and_benchmark_tables_and_diagram(tmp_path: Path) -> None:
    from leader.calibration import calibration_report, markdown_table, summarize
    from leader.report import calibration_section

    p, y = _population(400, 5, 8)
    groups = [str(i) for i in range(200)]
    fitted = fit_calibration(y[:200], p[:200] ** 2, groups)
    reports = [calibration_report(fitted, y[200:], p[200:] ** 2) for _ in range(2)]
    summary = summarize(reports)
    assert summary is not None and summary["runs"] == 2
    assert summary["ece_after"]["mean"] < summary["ece_before"]["mean"]
    assert [row["alpha"] for row in summary["conformal"]] == [0.05, 0.1, 0.2]
    table = markdown_table({"lr": summary, "broken": None})
    assert table[0].startswith("| model | calibration | ECE before") and len(table) == 3
    lines = calibration_section(tmp_path, {"student": {"calibration": reports[0]}})
    assert any(line.startswith("| LEADER(S) |") for line in lines)
    assert (tmp_path / "reliability.png").is_file()
