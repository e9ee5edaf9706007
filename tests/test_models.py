"""One model contract: the saved-model header, load(dir), the decision beside the model,
and the run records (run.json, model card)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from leader import models, runinfo
from leader.baselines.registry import create
from leader.data.store import VisitDataset
from leader.errors import LeaderError


def test_header_round_trip_and_errors(tmp_path: Path) -> None:
    models.write_header(tmp_path, "lr", {"C": 1.0}, {"drugs": 5})
    header = models.read_header(tmp_path, "lr")
    assert (header.model_type, header.format_version) == ("lr", models.FORMAT_VERSION)
    assert header.config == {"C": 1.0} and header.meta == {"drugs": 5}
    with pytest.raises(LeaderError, match="holds model 'lr', not 'ecc'"):
        models.read_header(tmp_path, "ecc")
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "format_version": 99}))
    with pytest.raises(LeaderError, match="newer than this leader reads"):
        models.read_header(tmp_path)
    with pytest.raises(LeaderError, match="not a saved model folder"):
        models.read_header(tmp_path / "nothing")


def test_load_opens_baselines_and_the_student_alike(
    tiny_dataset: VisitDataset, tmp_path: Path
) -> None:
    test = tiny_dataset.samples("test")
    for name in ("popularity", "leader_s"):
        overrides = {"epochs": 1, "batch_size": 4, "dim": 16, "heads": 2, "ffn": 32}
        model = create(name, **overrides).fit(tiny_dataset, log=lambda _: None)
        model.save_pretrained(tmp_path / name)
        loaded = models.load(tmp_path / name)
        assert models.read_header(tmp_path / name).model_type == name
        assert (loaded.predict_proba(test) == model.predict_proba(test)).all()
    student = models.load_deployed(tmp_path / "leader_s")
    assert student.ddi_pairs == tiny_dataset.ddi_pairs and 0 <= student.threshold <= 1
    baseline = models.load_deployed(tmp_path / "popularity")
    assert baseline.threshold == 0.5 and baseline.ddi_pairs == []  # no decision saved


def test_run_info_records_what_a_reader_needs(tiny_dataset: VisitDataset, tmp_path: Path) -> None:
    from leader.student.config import StudentConfig

    assert tiny_dataset.path is not None
    info = runinfo.write_run_info(
        tmp_path, "student", StudentConfig(), seed=3, dataset_dir=tiny_dataset.path
    )
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved == json.loads(json.dumps(info))
    assert saved["seed"] == 3 and saved["config"]["train"]["lr"] == 5e-4
    assert set(saved["dataset"]["sha256"]) >= {"visits.parquet", "splits.json", "vocab.json"}
    assert saved["dataset"]["split_patients"] == {
        k: len(v) for k, v in tiny_dataset.splits.items()
    }
    assert {"python", "numpy", "leader"} <= set(saved["versions"])
    assert saved["device"]["cpus"] >= 1 and saved["git_revision"]


def test_git_revision_is_the_leader_source_never_the_users_repo(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An installed copy of the package inside some other repository records no revision.
    import subprocess

    fake_root = tmp_path / "their-repo"
    package = fake_root / "site" / "leader"
    package.mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(fake_root)], check=True)
    monkeypatch.setattr(runinfo, "__file__", str(package / "runinfo.py"))
    runinfo.git_revision.cache_clear()
    try:
        assert runinfo.git_revision() == "unknown (installed package)"
    finally:
        runinfo.git_revision.cache_clear()


def test_model_card_says_what_it_is_and_is_not(tmp_path: Path) -> None:
    runinfo.write_model_card(
        tmp_path, "A model", "What it is.", data="Some data.", metrics={"prauc": 0.5}
    )
    card = (tmp_path / "README.md").read_text()
    assert "| prauc | 0.5000 |" in card and "Not medical advice" in card
    assert "Licence" in card and "Intended use" in card
