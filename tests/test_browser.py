"""The web page in a real headless Chromium: type a code, click, see drugs and warnings.

Needs Debian's chromium + chromium-driver (``bash scripts/install-browser.sh``, run by
``make setup``); skips with the reason when they are absent.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from leader.serve import ServeConfig, create_app, uvicorn_config
from test_serve_fixtures import eager_copy, trained_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
TOKEN = "page-token"


@contextlib.contextmanager
def serving(run: Path) -> Iterator[str]:
    """The service on ``run``, on a free loopback port, in a thread (as `leader serve`)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = ServeConfig(token=TOKEN, margin=1.0)
    app = create_app(run_dir=run, config=config)
    uv = uvicorn.Server(uvicorn_config(app, config, "127.0.0.1", port))  # as `leader serve`
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        assert time.monotonic() < deadline and thread.is_alive(), "server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        uv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture()
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The threshold-0 run (its calibration.json: method none, one validation visit)."""
    with serving(eager_copy(tmp_path_factory)) as base:
        yield base


@pytest.fixture()
def calibrated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The threshold-0 run calibrated on all nine visits of the tiny dataset (the validation
    split has one, too few for a conformal set smaller than every drug)."""
    from leader.calibration import fit_calibration, read_calibration, write_calibration
    from leader.data.store import VisitDataset
    from leader.recommend import load_model

    run = tmp_path_factory.mktemp("calibrated") / "run"
    shutil.copytree(eager_copy(tmp_path_factory), run)
    dataset = VisitDataset.load(trained_run(tmp_path_factory).parent / "tiny")
    mode = dataset.default_sample_mode
    samples = [s for split in ("train", "val", "test") for s in dataset.samples(split, mode)]
    prob = np.asarray(load_model(run).predict_proba(samples), dtype=np.float64)
    groups = [s.patient_id for s in samples]
    write_calibration(run, fit_calibration(dataset.targets(samples), prob, groups))
    calibration = read_calibration(run)
    assert calibration is not None and calibration.conformal.n == 9
    with serving(run) as base:
        yield base


@pytest.fixture()
def uncalibrated_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The threshold-0 run without calibration.json (a run saved before issue 21)."""
    run = tmp_path_factory.mktemp("uncalibrated") / "run"
    shutil.copytree(eager_copy(tmp_path_factory), run)
    (run / "calibration.json").unlink()
    with serving(run) as base:
        yield base


@pytest.fixture()
def browser() -> Iterator[object]:
    if not CHROMIUM or not DRIVER:
        pytest.skip("chromium and chromedriver not installed (run scripts/install-browser.sh)")
    selenium = pytest.importorskip("selenium", reason="selenium missing (pip install '.[dev]')")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    assert selenium
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1200,900",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def test_page_recommends_with_warnings_and_disclaimer(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 15)  # type: ignore[arg-type]
    driver.get(server + "/")  # type: ignore[attr-defined]
    find = driver.find_element  # type: ignore[attr-defined]
    disclaimer = find(By.ID, "disclaimer")
    assert disclaimer.is_displayed() and "not medical advice" in disclaimer.text.lower()

    token = find(By.ID, "token")
    token.send_keys(TOKEN)
    token.send_keys(Keys.TAB)  # "change" stores it

    # Search by name, pick the suggestion.
    diagnosis = find(By.ID, "diagnosis-input")
    diagnosis.send_keys("heart")
    suggestion = wait.until(
        ec.element_to_be_clickable((By.CSS_SELECTOR, "#diagnosis-suggestions li[data-code='d4']"))
    )
    assert "Heart failure" in suggestion.text
    suggestion.click()
    # Paste several codes, one unknown, and press Enter.
    diagnosis.send_keys("d1, nope", Keys.ENTER)
    # Words of a name + Enter pick the best match.
    procedure = find(By.ID, "procedure-input")
    procedure.send_keys("venous")
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#procedure-suggestions li"))
    procedure.send_keys(Keys.ENTER)
    chips = [c.get_attribute("data-code") for c in driver.find_elements(By.CSS_SELECTOR, ".chip")]  # type: ignore[attr-defined]
    assert chips == ["d4", "d1", "nope", "x1"]

    find(By.ID, "recommend").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr")) == 5)
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")  # type: ignore[attr-defined]
    codes = [row.find_elements(By.TAG_NAME, "td")[0].text for row in rows]
    assert sorted(codes) == ["m1", "m2", "m3", "m4", "m5"]
    probabilities = [float(r.find_elements(By.TAG_NAME, "td")[2].text.rstrip(" %")) for r in rows]
    assert probabilities == sorted(probabilities, reverse=True)
    warnings = find(By.ID, "ddi-warnings").text
    assert "beta blocking agents" in warnings and "diuretics" in warnings  # m1-m4
    assert "source: test" in warnings
    assert "nope" in find(By.ID, "unknown").text
    assert "not medical advice" in find(By.ID, "model-info").text

    # The DDI-safe selection (margin 1: never "both far above") withholds one of each pair.
    find(By.ID, "ddi-safe").click()
    find(By.ID, "recommend").click()
    wait.until(lambda d: "Withheld" in d.find_element(By.ID, "ddi-warnings").text)
    withheld = [
        w.text
        for w in driver.find_elements(By.CSS_SELECTOR, "#ddi-warnings .warning")  # type: ignore[attr-defined]
        if w.text.startswith("Withheld")
    ]
    assert len(withheld) == 2  # one drug of m1-m4 and one of m2-m5
    assert "Drug-drug interaction" not in find(By.ID, "ddi-warnings").text
    bar = find(By.CSS_SELECTOR, "#results tbody tr .bar")
    assert bar.size["width"] > 0  # set through the CSSOM, which the CSP allows
    assert_no_csp_violation(driver)


def assert_no_csp_violation(driver: object) -> None:
    """The page runs under the service's Content-Security-Policy without a violation."""
    logs = driver.get_log("browser")  # type: ignore[attr-defined]
    blocked = [e["message"] for e in logs if "Content Security Policy" in e["message"]]
    assert not blocked, blocked


def test_api_docs_render_offline(server: str, browser: object) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(server + "/docs")  # type: ignore[attr-defined]
    WebDriverWait(driver, 15).until(  # type: ignore[arg-type]
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#operations .op")) >= 4
    )
    text = driver.find_element(By.ID, "operations").text  # type: ignore[attr-defined]
    assert "/v1/recommend" in text and "visits" in text and "/v1/codes" in text
    assert "415: " in text and "<= 200" in text  # every status, the bounds (issue 22)
    assert_no_csp_violation(driver)


def test_page_takes_a_whole_patient_and_explains_each_drug(server: str, browser: object) -> None:
    """Profile fields and an earlier visit (its codes and drugs) go into the request; a
    click on a drug shows why, naming items of this visit, the earlier one and the profile."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 15)  # type: ignore[arg-type]
    driver.get(server + "/")  # type: ignore[attr-defined]
    find = driver.find_element  # type: ignore[attr-defined]
    token = find(By.ID, "token")
    token.send_keys(TOKEN)
    token.send_keys(Keys.TAB)
    # The profile's fields come from the model (GET /v1/model).
    gender = wait.until(lambda d: d.find_element(By.ID, "profile-gender"))
    gender.send_keys("F")
    find(By.ID, "add-visit").click()
    find(By.ID, "visit0-diagnosis-input").send_keys("d2, d3", Keys.ENTER)
    find(By.ID, "visit0-medication-input").send_keys("m2", Keys.ENTER)
    chips = driver.find_elements(By.CSS_SELECTOR, "fieldset.visit .chip")  # type: ignore[attr-defined]
    assert [c.get_attribute("data-code") for c in chips] == ["d2", "d3", "m2"]
    find(By.ID, "diagnosis-input").send_keys("d1", Keys.ENTER)
    find(By.ID, "procedure-input").send_keys("x1", Keys.ENTER)

    find(By.ID, "recommend").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug")) == 5)
    assert not find(By.ID, "set-info").is_displayed()  # no miss_rate in this answer
    texts = []
    for row in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug"):  # type: ignore[attr-defined]
        row.click()
        because = wait.until(lambda d, r=row: r.find_element(By.XPATH, "following-sibling::tr[1]"))
        assert "because" in because.get_attribute("class")
        texts.append(because.text)
    assert all(t.startswith("because: ") for t in texts)
    joined = " ".join(texts)
    assert "d1 Hypertension" in joined  # this visit, with its name
    assert "earlier visit 1:" in joined  # the earlier visit was sent and read
    assert "gender: F" in joined  # so was the profile
    assert "+" in joined or "−" in joined
    # a second click hides the explanation again
    first = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug")[0]  # type: ignore[attr-defined]
    first.click()
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")  # type: ignore[attr-defined]
    assert len(rows) == 5 + 4  # four explanations still open, the first one closed
    assert_no_csp_violation(driver)


def _open_page(driver: object, base: str) -> None:
    """The page, with the token typed in (its model details then load)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/")  # type: ignore[attr-defined]
    token = driver.find_element(By.ID, "token")  # type: ignore[attr-defined]
    token.send_keys(TOKEN)
    token.send_keys(Keys.TAB)
    WebDriverWait(driver, 15).until(  # type: ignore[arg-type]
        lambda d: "DDI data" in d.find_element(By.ID, "model-info").text
    )


def test_page_shows_the_conformal_set_for_a_chosen_miss_rate(
    calibrated_server: str, browser: object
) -> None:
    """Issue 21: choose a miss rate, see the conformal set (named, and marked among the
    ranked drugs), calibrated probabilities; too small a miss rate gives the full set."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.select import Select
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, 15)  # type: ignore[arg-type]
    _open_page(driver, calibrated_server)
    find = driver.find_element  # type: ignore[attr-defined]
    control = find(By.ID, "miss-rate-control")
    wait.until(lambda d: control.is_displayed())
    assert "9 calibration visits" in find(By.ID, "model-info").text
    find(By.ID, "diagnosis-input").send_keys("d4", Keys.ENTER)
    find(By.ID, "procedure-input").send_keys("x3", Keys.ENTER)

    # What the service answers for the same patient and miss rate.
    patient = {"visits": [{"diagnoses": ["d4"], "procedures": ["x3"]}]}
    answer = httpx.post(
        calibrated_server + "/v1/recommend?top=30&miss_rate=0.2",
        json=patient,
        headers={"Authorization": f"Bearer {TOKEN}"},
    ).json()
    conformal = answer["conformal"]
    expected = [d["code"] for d in conformal["set"]]
    assert not conformal["full_set"] and 0 < len(expected) < 5  # a real choice among 5

    Select(find(By.ID, "miss-rate")).select_by_value("0.2")
    find(By.ID, "recommend").click()
    info = find(By.ID, "set-info")
    wait.until(lambda d: info.is_displayed())
    text = info.text
    assert text.startswith("Drug set for a miss rate ≤ 0.2 (guaranteed in expectation over 9 ")
    assert all(code in text for code in expected)
    assert f"{len(expected)} of 5 drugs" in text
    rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug")  # type: ignore[attr-defined]
    marked = [r.get_attribute("data-code") for r in rows if "in-set" in r.get_attribute("class")]
    assert sorted(marked) == sorted(expected)
    cells = [r.find_elements(By.TAG_NAME, "td")[4].text for r in rows]
    assert cells.count("in set") == len(expected) and find(By.ID, "set-column").is_displayed()
    # Calibrated probabilities (fitted on nine visits: not "none"), the score on hover.
    method = answer["calibration"]
    calibration = find(By.ID, "calibration-info")
    assert calibration.is_displayed() and f"calibrated ({method}" in calibration.text
    probability = rows[0].find_elements(By.TAG_NAME, "td")[2]
    assert probability.get_attribute("title").startswith("model's own score: ")
    assert "model score ≥" in find(By.ID, "threshold").text

    # 5 %: (9 + 1) * 0.05 < 1, too few visits for any threshold: the full vocabulary.
    Select(find(By.ID, "miss-rate")).select_by_value("0.05")
    find(By.ID, "recommend").click()
    wait.until(lambda d: "≤ 0.05" in d.find_element(By.ID, "set-info").text)
    assert "the full vocabulary (all 5 drugs)" in find(By.ID, "set-info").text
    marked = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug.in-set")  # type: ignore[attr-defined]
    assert len(marked) == 5

    # Off again: no set, no set column.
    Select(find(By.ID, "miss-rate")).select_by_value("")
    find(By.ID, "recommend").click()
    wait.until(lambda d: not d.find_element(By.ID, "set-info").is_displayed())
    assert not find(By.ID, "set-column").is_displayed()
    assert not driver.find_elements(By.CSS_SELECTOR, "#results tbody tr.in-set")  # type: ignore[attr-defined]
    assert_no_csp_violation(driver)


def test_no_miss_rate_control_without_calibration(
    uncalibrated_server: str, browser: object
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    _open_page(driver, uncalibrated_server)
    find = driver.find_element  # type: ignore[attr-defined]
    assert "calibration" not in find(By.ID, "model-info").text
    assert not find(By.ID, "miss-rate-control").is_displayed()
    find(By.ID, "diagnosis-input").send_keys("d1", Keys.ENTER)
    find(By.ID, "recommend").click()
    WebDriverWait(driver, 15).until(  # type: ignore[arg-type]
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results tbody tr.drug")) == 5
    )
    assert not find(By.ID, "set-info").is_displayed()
    assert not find(By.ID, "calibration-info").is_displayed()  # the model's own probabilities
    assert "probability ≥" in find(By.ID, "threshold").text
    assert_no_csp_violation(driver)
