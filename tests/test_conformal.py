"""Conformal risk control (leader.conformal): the threshold, its guarantee, and its use in
``recommend --miss-rate`` and ``/v1/recommend?miss_rate=``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from conftest import make_tiny_dataset
from leader.calibration import Calibration, Calibrator, fit_calibration, read_calibration
from leader.conformal import RiskCurve, crc_threshold, miss_fraction, risk_curve, set_summary
from leader.errors import LeaderError
from leader.recommend import Recommender
from leader.serve import ServeConfig, create_app, parse_query


def brute_force_threshold(scores: np.ndarray, truth: np.ndarray, alpha: float) -> float:
    """Every candidate threshold, the risk computed from the sets themselves."""
    n = len(scores)
    best = 0.0
    for t in np.unique(scores[truth > 0.5]):
        risk = miss_fraction(scores >= t, truth).mean()
        if n / (n + 1) * risk + 1 / (n + 1) <= alpha + 1e-12:
            best = max(best, float(t))
    return best


def test_hand_computed_case() -> None:
    scores = np.array([[0.9, 0.4, 0.1], [0.8, 0.3, 0.6]])
    truth = np.array([[1, 1, 0], [1, 0, 1]])
    # Prescribed scores 0.4, 0.6, 0.8, 0.9 (each 1/2 of a visit's loss); n = 2.
    curve = risk_curve(scores, truth)
    assert curve.scores.tolist() == [0.4, 0.6, 0.8, 0.9]
    assert curve.risk.tolist() == [0.0, 0.25, 0.5, 0.75] and curve.risk_above == 1.0
    assert crc_threshold(scores, truth, 0.5) == 0.6  # (2/3) R + 1/3 <= 1/2  <=>  R <= 1/4
    assert crc_threshold(scores, truth, 0.7) == 0.8  # R <= 0.55
    assert crc_threshold(scores, truth, 0.34) == 0.4  # R <= 0.01: only R = 0
    assert crc_threshold(scores, truth, 0.3) == 0.0  # 1/(n+1) > alpha: every drug
    # The set at 0.6 misses visit 0's drug at 0.4: half of visit 0, nothing of visit 1.
    assert miss_fraction(scores >= 0.6, truth).tolist() == [0.5, 0.0]


def test_visits_without_drugs_and_ties() -> None:
    scores = np.array([[0.5, 0.5, 0.2], [0.7, 0.1, 0.1], [0.3, 0.3, 0.3]])
    truth = np.array([[1, 1, 0], [0, 0, 0], [0, 1, 0]])
    assert miss_fraction(np.zeros((3, 3), bool), truth).tolist() == [1.0, 0.0, 1.0]
    curve = risk_curve(scores, truth)
    assert curve.scores.tolist() == [0.3, 0.5]  # tied scores count once
    assert curve.risk.tolist() == [0.0, pytest.approx(1 / 3)]
    assert curve.risk_above == pytest.approx(2 / 3)


@pytest.mark.parametrize("seed", range(5))
def test_threshold_equals_brute_force_search(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, drugs = int(rng.integers(5, 60)), int(rng.integers(2, 12))
    scores = np.round(rng.random((n, drugs)), 2)  # rounding makes ties
    truth = rng.random((n, drugs)) < 0.3
    for alpha in (0.05, 0.1, 0.2, 0.5, 0.9):
        expected = brute_force_threshold(scores, truth, alpha)
        got = crc_threshold(scores, truth, alpha)
        if got > 1.0:  # even the empty set qualified (possible at large alpha)
            n_ = len(scores)
            assert (n_ * miss_fraction(scores > 2, truth).mean() + 1) / (n_ + 1) <= alpha
        else:
            assert got == expected


def test_monotone_in_alpha() -> None:
    rng = np.random.default_rng(1)
    scores = rng.random((200, 20))
    truth = rng.random((200, 20)) < scores * 0.6
    curve = risk_curve(scores, truth)
    alphas = np.linspace(0.01, 0.99, 99)
    thresholds = [curve.threshold(a) for a in alphas]
    assert all(a <= b for a, b in zip(thresholds, thresholds[1:], strict=False))
    sizes = [(scores >= t).sum() for t in thresholds]
    assert all(a >= b for a, b in zip(sizes, sizes[1:], strict=False))
    # The loss falls as the threshold falls (sets grow).
    losses = [miss_fraction(scores >= t, truth).mean() for t in np.linspace(1, 0, 21)]
    assert all(a >= b for a, b in zip(losses, losses[1:], strict=False))


def test_thinned_curve_is_small_and_never_less_safe() -> None:
    rng = np.random.default_rng(7)
    scores = rng.random((3000, 30))
    truth = rng.random((3000, 30)) < scores * 0.5
    exact = risk_curve(scores, truth)
    thin = exact.thinned(200)
    assert len(exact.scores) > 10_000 and len(thin.scores) <= 202
    for alpha in np.linspace(0.01, 0.99, 197):
        t_exact, t_thin = exact.threshold(alpha), thin.threshold(alpha)
        assert t_thin <= t_exact  # a larger set: never a higher miss rate
        # ... and not by much: R_hat there is lower by at most one grid step plus one jump
        # of R_hat (one prescribed drug of one visit: at most 1/n).
        k = np.searchsorted(exact.scores, t_thin)
        gap = exact.risk[np.searchsorted(exact.scores, t_exact)] - exact.risk[k]
        assert gap <= exact.risk_above / 200 + 1 / exact.n + 1e-12
    assert exact.thinned(len(exact.scores)) is exact


def test_alpha_out_of_range_is_refused() -> None:
    curve = risk_curve(np.array([[0.5]]), np.array([[1]]))
    for alpha in (0.0, 1.0, -0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            curve.threshold(alpha)


def _simulate(alpha: float, n_cal: int, trials: int, seed: int) -> tuple[float, float]:
    """Mean test miss rate over random calibration/test splits of one population."""
    rng = np.random.default_rng(seed)
    drugs, total = 15, 4000
    base = rng.normal(-1.5, 1.0, drugs)
    latent = base + rng.normal(0, 1.2, (total, drugs))
    truth = rng.random((total, drugs)) < 1 / (1 + np.exp(-latent))
    truth[np.arange(total), rng.integers(0, drugs, total)] = True  # >= 1 drug per visit
    scores = 1 / (1 + np.exp(-(latent + rng.normal(0, 0.7, latent.shape))))  # a noisy model
    rates = []
    for _ in range(trials):
        order = rng.permutation(total)
        cal, test = order[:n_cal], order[n_cal : n_cal + 500]
        t = crc_threshold(scores[cal], truth[cal], alpha)
        rates.append(miss_fraction(scores[test] >= t, truth[test]).mean())
    values = np.asarray(rates)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(trials))


@pytest.mark.parametrize(("alpha", "n_cal"), [(0.1, 100), (0.2, 30), (0.05, 200)])
def test_simulated_miss_rate_is_at_most_alpha(alpha: float, n_cal: int) -> None:
    mean, se = _simulate(alpha, n_cal, trials=300, seed=int(alpha * 100) + n_cal)
    assert mean <= alpha + 3 * se
    # ... and not vacuously: CRC is tight to within B/(n+1) under continuous scores.
    assert mean >= alpha - 2 / (n_cal + 1) - 3 * se


def test_risk_curve_round_trips_and_bad_files_are_refused() -> None:
    rng = np.random.default_rng(3)
    scores, truth = rng.random((40, 6)), rng.random((40, 6)) < 0.4
    curve = risk_curve(scores, truth)
    back = RiskCurve.from_json(json.loads(json.dumps(curve.to_json())))
    for alpha in (0.05, 0.1, 0.3):
        assert back.threshold(alpha) == curve.threshold(alpha)
    bad = curve.to_json() | {"risk": curve.risk[::-1].tolist()}
    with pytest.raises(ValueError, match="must not decrease"):
        RiskCurve.from_json(bad)


def test_set_summary_reports_miss_rate_size_and_full_set() -> None:
    scores = np.array([[0.9, 0.4, 0.1], [0.8, 0.3, 0.6]])
    truth = np.array([[1, 1, 0], [1, 0, 1]])
    curve = risk_curve(scores, truth)
    row = set_summary(curve, scores, truth, 0.5)
    assert row["threshold"] == 0.6 and row["miss_rate"] == 0.25 and row["set_size"] == 1.5
    assert row["calibration_visits"] == 2 and not row["full_set"]
    assert set_summary(curve, scores, truth, 0.2)["full_set"]


# ------------------------------------------------------------------ recommend and serve
class CalibratedModel:
    """Fixed probabilities over the tiny vocabulary, with a calibration and a risk curve."""

    def __init__(self, prob: Sequence[float], calibration: Calibration | None) -> None:
        tiny = make_tiny_dataset()
        self.vocab = tiny.vocab
        self.ddi_pairs = tiny.ddi_pairs
        self.ddi_source = "test"
        self.threshold = 0.5
        self.prob = np.asarray(prob, dtype=np.float32)
        self.calibration = calibration

    def predict_proba(self, samples: Sequence[object]) -> np.ndarray:
        return np.tile(self.prob, (len(samples), 1))


def _calibration(method: str = "none") -> Calibration:
    # 40 calibration visits whose prescribed drugs score 0.35 (1/4 of them) or 0.8.
    # float32 as a model's own output: the scores served are compared with these exactly.
    scores = np.tile(np.float32([0.8, 0.35, 0.1, 0.1, 0.1]), (40, 1)).astype(np.float64)
    truth = np.zeros((40, 5), bool)
    truth[:, 0] = True
    truth[:10, 1] = True
    curve = risk_curve(scores, truth)
    calibrator = Calibrator(method, temperature=2.0) if method == "temperature" else Calibrator()
    return Calibration(calibrator, {}, 40, 40, "val", curve)


def test_recommender_adds_the_conformal_set() -> None:
    model = CalibratedModel([0.8, 0.35, 0.1, 0.6, 0.05], _calibration())
    rec = Recommender(model)
    patient = {"visits": [{"diagnoses": ["d1"]}]}
    # R(0.8) = 10/40 * 1/2 = 0.125; (40 * 0.125 + 1) / 41 = 0.146 <= 0.2, not <= 0.1.
    [loose] = rec.recommend([patient], miss_rate=0.2)
    assert loose["conformal"]["threshold"] == pytest.approx(0.8)
    assert [d["code"] for d in loose["conformal"]["set"]] == ["m1"]
    [tight] = rec.recommend([patient], miss_rate=0.1)
    assert tight["conformal"]["threshold"] == pytest.approx(0.35, abs=1e-6)
    assert [d["code"] for d in tight["conformal"]["set"]] == ["m1", "m4", "m2"]
    assert tight["conformal"]["calibration_visits"] == 40 and tight["conformal"]["miss_rate"] == 0.1
    [full] = rec.recommend([patient], miss_rate=0.02)  # 1/41 > 0.02: every drug
    assert full["conformal"]["full_set"] and len(full["conformal"]["set"]) == 5
    [plain] = rec.recommend([patient])
    assert "conformal" not in plain and "calibration" not in plain  # method none: as before


def test_calibrated_probabilities_are_shown_with_the_score() -> None:
    model = CalibratedModel([0.8, 0.35, 0.1, 0.6, 0.05], _calibration("temperature"))
    [result] = Recommender(model).recommend([{"visits": [{"diagnoses": ["d1"]}]}])
    first = result["ranked"][0]
    assert result["calibration"] == "temperature"
    assert first["code"] == "m1" and first["score"] == 0.8
    assert first["probability"] == pytest.approx(1 / (1 + 0.25**0.5), abs=1e-4)  # logit / 2
    # The decision threshold still applies to the model's own score.
    assert [d["code"] for d in result["recommended"]] == ["m1", "m4"]


def test_miss_rate_without_a_risk_curve_is_a_clear_error() -> None:
    rec = Recommender(CalibratedModel([0.8, 0.35, 0.1, 0.6, 0.05], None))
    with pytest.raises(LeaderError, match="leader calibrate"):
        rec.recommend([{"visits": [{"diagnoses": ["d1"]}]}], miss_rate=0.1)


@pytest.mark.parametrize("text", ["0", "1", "-0.1", "1.5", "abc", "nan", "inf", "", "0x1"])
def test_parse_query_refuses_bad_miss_rates(text: str) -> None:
    path, message = parse_query(f"miss_rate={text}".encode())  # type: ignore[misc]
    assert path == "query.miss_rate" and "strictly between 0 and 1" in message


def test_parse_query_reads_miss_rate() -> None:
    assert parse_query(b"miss_rate=0.1&top=3") == (False, 3, False, 0.1)
    assert parse_query(b"") == (False, 20, False, None)


def test_service_answers_the_set_and_422s() -> None:
    model = CalibratedModel([0.8, 0.35, 0.1, 0.6, 0.05], _calibration())
    app = create_app(model=model, config=ServeConfig())
    patient = {"visits": [{"diagnoses": ["d1"]}]}
    with TestClient(app, base_url="http://localhost") as client:
        ok = client.post("/v1/recommend?miss_rate=0.2", json=patient)
        assert ok.status_code == 200
        assert [d["code"] for d in ok.json()["conformal"]["set"]] == ["m1"]
        bad = client.post("/v1/recommend?miss_rate=1", json=patient)
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["path"] == "query.miss_rate"
        info = client.get("/v1/model").json()
        assert info["calibration"] == "none" and info["conformal_visits"] == 40
        schema = client.get("/openapi.json").json()
        params = schema["paths"]["/v1/recommend"]["post"]["parameters"]
        assert "miss_rate" in [p["name"] for p in params]
    bare = create_app(model=CalibratedModel([0.8, 0.35, 0.1, 0.6, 0.05], None))
    with TestClient(bare, base_url="http://localhost") as client:
        refused = client.post("/v1/recommend?miss_rate=0.1", json=patient)
        assert refused.status_code == 422
        assert "calibration.json" in refused.json()["detail"][0]["message"]
        assert "conformal" not in client.post("/v1/recommend", json=patient).json()


def test_fit_calibration_saves_a_curve_that_loads(tmp_path: Path) -> None:
    from leader.calibration import write_calibration

    rng = np.random.default_rng(0)
    prob = rng.random((60, 5))
    truth = rng.random((60, 5)) < prob
    fitted = fit_calibration(truth, prob, [f"p{i // 2}" for i in range(60)])
    write_calibration(tmp_path, fitted)
    loaded = read_calibration(tmp_path)
    assert loaded is not None and loaded.conformal is not None
    assert loaded.conformal.threshold(0.1) == crc_threshold(prob, truth, 0.1)


def test_real_mimic3_demo_calibrate_and_recommend_a_set(test_data: Path, tmp_path: Path) -> None:
    """The MIMIC-III demo end to end: prepare, LR, `leader calibrate`, a conformal set."""
    from typer.testing import CliRunner

    from leader.baselines.registry import create
    from leader.cli import app
    from leader.data.prepare import prepare_mimic3
    from leader.data.store import VisitDataset
    from leader.recommend import load_model

    resources = test_data / "resources"
    folder = tmp_path / "data"
    prepare_mimic3(
        test_data / "mimic-iii-demo", resources, folder, ddi=resources / "ddi_atc3_pairs.csv"
    )
    dataset = VisitDataset.load(folder)
    model = create("lr", seed=42)
    model.fit(dataset)  # type: ignore[call-arg]
    model.save_pretrained(tmp_path / "lr")
    result = CliRunner().invoke(
        app, ["calibrate", "--run", str(tmp_path / "lr"), "--dataset", str(folder)]
    )
    assert result.exit_code == 0, result.output
    val = dataset.samples("val")
    saved = read_calibration(tmp_path / "lr")
    assert saved is not None and saved.conformal is not None and saved.conformal.n == len(val)
    # A student (what recommend serves) writes its own calibration.json while training.
    from leader.config import TrainConfig
    from leader.student import StudentConfig, train_student

    config = StudentConfig(dim=16, heads=2, ffn=32, hidden=16, train=TrainConfig(epochs=2))
    loaded = load_model(train_student(folder, tmp_path / "student", config))
    patient = {"visits": [{"diagnoses": list(val[0].current.diagnoses)}]}
    [answer] = Recommender(loaded).recommend([patient], miss_rate=0.2)
    drugs = len(dataset.vocab.codes["medication"])
    assert answer["conformal"]["calibration_visits"] == len(val)
    assert 0 < len(answer["conformal"]["set"]) <= drugs
    # n < 1/alpha - 1 (10 visits, alpha 0.05): every drug.
    [full] = Recommender(loaded).recommend([patient], miss_rate=0.05)
    assert len(val) < 19 and full["conformal"]["full_set"]
    assert len(full["conformal"]["set"]) == drugs
