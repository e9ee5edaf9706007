"""Why this drug: occlusion is exact, integrated gradients and the teacher's attention are
faithful to their models, every registered model explains, and the service and CLI show it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from leader.baselines import MODELS, create
from leader.data.store import Sample, Visit, VisitDataset, Vocabulary
from leader.errors import LeaderError
from leader.explain import (
    Item,
    explain,
    input_items,
    integrated_gradients,
    occlusion,
    parse_explain,
    presence_forward,
    without,
)
from leader.serve import ServeConfig, create_app
from test_baselines import TINY, atc3_dataset, write_smiles
from test_serve_fixtures import trained_run

VOCAB = Vocabulary(
    codes={"diagnosis": ["d1", "d2", "d3"], "procedure": ["x1"], "medication": ["m1", "m2"]},
    names={"diagnosis": {"d1": "Heart failure"}, "medication": {"m1": "diuretics"}},
)
SAMPLE = Sample(
    "p:v2",
    "p",
    (Visit("v1", None, ("d2",), (), ("m2",)),),
    Visit("v2", None, ("d1", "d3"), ("x1",), ()),
    {"gender": "F", "age_band": "60-69"},
)


class HandBuilt:
    """p(m1) = 0.1 + 0.5 [d1 now] + 0.2 [m2 before] + 0.1 [gender F]; p(m2) = 0.3 flat."""

    vocab = VOCAB
    threshold = 0.5

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        rows = []
        for s in samples:
            before = any("m2" in v.medications for v in s.history)
            m1 = 0.1 + 0.5 * ("d1" in s.current.diagnoses) + 0.2 * before
            rows.append([m1 + 0.1 * (s.profile.get("gender") == "F"), 0.3])
        return np.asarray(rows)


def test_items_and_removal() -> None:
    items = input_items(SAMPLE)
    assert items[:3] == [Item("diagnosis", "d1", 1), Item("diagnosis", "d3", 1),
                         Item("procedure", "x1", 1)]  # fmt: skip
    assert Item("medication", "m2", 0) in items and Item("profile", "gender", None) in items
    smaller = without(SAMPLE, [Item("diagnosis", "d1", 1), Item("profile", "gender", None)])
    assert smaller.current.diagnoses == ("d3",) and smaller.profile == {"age_band": "60-69"}
    assert smaller.history == SAMPLE.history and SAMPLE.current.diagnoses == ("d1", "d3")


def test_occlusion_is_the_exact_effect_of_removing_an_item() -> None:
    full, contributions = occlusion(HandBuilt().predict_proba, [SAMPLE], [input_items(SAMPLE)])
    assert full[0].tolist() == pytest.approx([0.9, 0.3])
    effect = dict(zip(input_items(SAMPLE), contributions[0][:, 0].tolist(), strict=True))
    assert effect[Item("diagnosis", "d1", 1)] == pytest.approx(0.5)
    assert effect[Item("medication", "m2", 0)] == pytest.approx(0.2)
    assert effect[Item("profile", "gender", None)] == pytest.approx(0.1)
    assert effect[Item("diagnosis", "d3", 1)] == 0.0
    assert np.all(contributions[0][:, 1] == 0.0)  # m2 depends on nothing
    (m1,) = explain(HandBuilt(), [SAMPLE], top_items=2)[0]  # only m1 reaches 0.5
    assert [c.code for c in m1.items] == ["d1", "m2"] and m1.items[0].name == "Heart failure"
    assert m1.items[0].current and not m1.items[1].current and m1.unit == "probability"
    assert m1.to_json()["because"][0]["contribution"] == 0.5


def driven_dataset(root: Path) -> VisitDataset:
    """60 single-visit patients: m1 is given exactly when d1 is diagnosed, m2 at random."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        diagnoses = [d for d in ("d1", "d2", "d3") if rng.random() < 0.5] or ["d2"]
        drugs = (["m1"] if "d1" in diagnoses else []) + (["m2"] if rng.random() < 0.5 else [])
        rows.append((f"p{i}", f"v{i}", "2100-01-01", diagnoses, ["x1"], drugs or ["m2"]))
    visits = pd.DataFrame(
        rows, columns=["patient_id", "visit_id", "time", "diagnoses", "procedures", "medications"]
    )
    visits["time"] = pd.to_datetime(visits["time"])
    ids = [r[0] for r in rows]
    dataset = VisitDataset(
        visits=visits,
        profiles=pd.DataFrame({"patient_id": ids, "gender": ["F", "M"] * 30}),
        vocab=VOCAB,
        splits={"train": ids[:40], "val": ids[40:50], "test": ids[50:]},
        stats={"patients": 60, "visits": 60},
        manifest={"source": "test", "options": {"samples": "all"}},
    )
    return VisitDataset.load(dataset.save(root / "driven"))


@pytest.fixture(scope="module")
def driven(tmp_path_factory: pytest.TempPathFactory) -> tuple[VisitDataset, Any]:
    from leader.config import TrainConfig
    from leader.student import StudentConfig, train_student
    from leader.student.model import LeaderStudent

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("driven")
    dataset = driven_dataset(root)
    train = TrainConfig(epochs=30, batch_size=8, patience=30, lr=1e-2)
    config = StudentConfig(dim=16, heads=2, ffn=32, hidden=16, dropout=0.0, train=train)
    assert dataset.path is not None
    run = train_student(dataset.path, root / "run", config, log=lambda _: None)
    return dataset, LeaderStudent.from_pretrained(run)


@pytest.mark.parametrize("method", ["occlusion", "integrated_gradients"])
def test_the_code_that_drives_a_drug_comes_first_with_a_positive_sign(
    driven: tuple[VisitDataset, Any], method: str
) -> None:
    dataset, student = driven
    with_d1 = [s for s in dataset.samples("test") if "d1" in s.current.diagnoses]
    assert with_d1
    drugs = [["m1"]] * len(with_d1)
    for (m1,) in explain(student, with_d1, drugs, top_items=3, method=method):
        assert m1.probability > 0.5
        top = m1.items[0]
        assert (top.kind, top.code, top.current) == ("diagnosis", "d1", True)
        assert top.value > 0.02 and all(abs(c.value) < top.value for c in m1.items[1:])


def test_integrated_gradients_add_up_to_the_change_from_the_baseline(
    driven: tuple[VisitDataset, Any],
) -> None:
    """Completeness: the attributions sum to f(as given) - f(every item's embedding zero).

    The student's set layers are pre-LayerNorm, so f is steep near weight 0 (a norm of a
    near-zero vector): the sum converges only with many steps (16: off by 0.01)."""
    _, student = driven
    items = input_items(SAMPLE, student.profile_vocab.fields)
    prob, values = integrated_gradients(student, SAMPLE, items, [0, 1], steps=1024)
    assert prob == pytest.approx(student.predict_proba([SAMPLE])[0], abs=1e-5)
    forward = presence_forward(student, SAMPLE, items)
    with torch.no_grad():
        ends = forward(torch.stack([torch.ones(len(items)), torch.zeros(len(items))])).numpy()
    assert ends[0] == pytest.approx(prob, abs=1e-5)
    assert values.sum(axis=0) == pytest.approx(ends[0] - ends[1], abs=1e-3)
    assert np.abs(values).max() > 0.01


def test_every_registered_model_explains(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    dataset = VisitDataset.load(atc3_dataset().save(tmp_path / "ds"))
    smiles = write_smiles(tmp_path / "atc3_smiles.csv")
    samples = dataset.samples(None)[:3]
    for name in MODELS:
        model = create(name, smiles=str(smiles), **TINY).fit(dataset, log=lambda _: None)
        drugs = [list(dataset.vocab.codes["medication"][:2])] * len(samples)
        explained = explain(model, samples, drugs, top_items=4)
        assert [len(e) for e in explained] == [2] * len(samples), name
        prob = model.predict_proba(samples)
        for sample, row, per_drug in zip(samples, prob, explained, strict=True):
            for column, explanation in enumerate(per_drug):
                assert explanation.probability == pytest.approx(row[column], abs=1e-5), name
                assert len(explanation.items) <= 4
                for c in explanation.items:  # exact: p(record) - p(record without it)
                    item = Item(c.kind, c.code, c.visit)
                    less = model.predict_proba([without(sample, [item])])[0, column]
                    assert c.value == pytest.approx(row[column] - less, abs=1e-5), name


def test_methods_are_checked(driven: tuple[VisitDataset, Any]) -> None:
    _, student = driven
    with pytest.raises(LeaderError, match="integrated_gradients explains LEADER"):
        explain(HandBuilt(), [SAMPLE], method="integrated_gradients")
    with pytest.raises(LeaderError, match="attention explains"):
        explain(student, [SAMPLE], method="attention")
    with pytest.raises(LeaderError, match="unknown"):
        explain(student, [SAMPLE], method="shap")
    with pytest.raises(LeaderError, match="top_items"):
        explain(student, [SAMPLE], top_items=0)
    with pytest.raises(LeaderError, match="not in the model's vocabulary"):
        explain(student, [SAMPLE], drugs=[["zz"]])


def test_the_teacher_explains_by_its_label_attention(
    tmp_path: Path, tiny_dataset: VisitDataset
) -> None:
    from leader.teacher import LeaderTeacher, TeacherConfig
    from leader.teacher.explain import attention_contributions
    from leader.teacher.prompts import PromptBuilder
    from leader.teacher.testing import make_tiny_backbone

    texts = PromptBuilder(tiny_dataset.vocab).build_all(tiny_dataset.samples(None, "all"))
    backbone = make_tiny_backbone(tmp_path / "tiny-llama", texts)
    config = TeacherConfig(model=str(backbone), lora_r=0, pooling="labels", label_width=8,
                           precision="fp32")  # fmt: skip
    teacher = LeaderTeacher.build(config, tiny_dataset.vocab).eval()
    with torch.no_grad():  # a head that reads its tokens (a fresh one has zero weights)
        teacher.head.weight.normal_(0, 1.0)
        teacher.head.mean.weight.normal_(0, 0.1)
    sample = next(s for s in tiny_dataset.samples(None, "all") if len(s.history) == 2)
    items = input_items(sample)
    prob, found, values = attention_contributions(teacher, sample, items)
    logits = torch.logit(torch.from_numpy(prob)).numpy()
    # the split is exact: contributions + bias = the logit of every drug
    assert values.sum(axis=0) + teacher.head.bias.detach().numpy() == pytest.approx(logits, 1e-4)
    assert prob == pytest.approx(teacher.predict_proba([sample])[0], abs=1e-5)
    # every code of the record is found in the prompt and keeps its visit
    codes = [i for i in found if i.kind != "word"]
    assert set(codes) == {i for i in items if i.kind != "profile"} | {
        i for i in items if i.kind == "profile" and sample.profile[i.code] != "unknown"
    }
    assert any(i.kind == "word" and i.code == "prescribed" for i in found)
    explained = explain(teacher, [sample], [["m1"]], top_items=50)[0][0]
    assert explained.method == "attention" and explained.unit == "logit"
    assert "Hypertension" in {c.name for c in explained.items}
    # A visit the prompt leaves out maps to nothing, though its codes recur in the others
    # (d1 Hypertension is in the first visit and in this one).
    teacher.config = replace(teacher.config, history_visits=1)
    _, found, _ = attention_contributions(teacher, sample, items)
    assert {i for i in found if i.kind != "word"} == {
        i for i in items if i.visit != 0 and not (i.kind == "profile" and
                                                 sample.profile[i.code] == "unknown")
    }  # fmt: skip
    assert Item("diagnosis", "d1", 0) in items and Item("diagnosis", "d1", 2) in found


@pytest.fixture()
def client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    app = create_app(run_dir=trained_run(tmp_path_factory), config=ServeConfig())
    with TestClient(app, base_url="http://localhost") as test_client:
        yield test_client


PATIENT = {
    "profile": {"gender": "F"},
    "visits": [
        {"diagnoses": ["d1", "d2"], "procedures": ["x1"], "medications": ["m1", "m2"]},
        {"diagnoses": ["d1"], "procedures": ["x1", "x2"]},
    ],
}


def test_service_explains_every_listed_drug(client: TestClient) -> None:
    plain = client.post("/v1/recommend", json=PATIENT).json()
    assert "explanations" not in plain
    answer = client.post("/v1/recommend?explain=true&explain_items=3", json=PATIENT).json()
    listed = {d["code"] for d in answer["ranked"]} | {d["code"] for d in answer["recommended"]}
    assert {e["drug"] for e in answer["explanations"]} == listed
    ranked = {d["code"]: d["probability"] for d in answer["ranked"]}
    for e in answer["explanations"]:
        assert e["probability"] == pytest.approx(ranked[e["drug"]], abs=1e-4)
        assert 1 <= len(e["because"]) <= 3 and e["method"] == "occlusion"
        strengths = [abs(c["contribution"]) for c in e["because"]]
        assert strengths == sorted(strengths, reverse=True)
        assert set(e["because"][0]) == {"kind", "code", "name", "visit", "current",
                                        "contribution"}  # fmt: skip
    batch = client.post("/v1/recommend?explain=1", json={"patients": [PATIENT, PATIENT]}).json()
    assert [len(r["explanations"]) for r in batch["results"]] == [len(listed)] * 2


@pytest.mark.parametrize(
    ("query", "path"),
    [
        ("explain=maybe", "query.explain"),
        ("explain=true&explain_items=0", "query.explain_items"),
        ("explain=true&explain_items=51", "query.explain_items"),
        ("explain=true&explain_items=x", "query.explain_items"),
        ("explain=true&explain_items=-1", "query.explain_items"),
    ],
)
def test_bad_explain_values_are_422_in_the_one_error_shape(
    client: TestClient, query: str, path: str
) -> None:
    response = client.post(f"/v1/recommend?{query}", json=PATIENT)
    assert response.status_code == 422
    (problem,) = response.json()["detail"]
    assert problem["path"] == path and query.split("&")[-1].split("=")[0] in problem["message"]


def test_explain_work_is_bounded(client: TestClient) -> None:
    codes = [f"c{i}" for i in range(600)]  # unknown codes are ignored: few items
    small = {"visits": [{"diagnoses": codes}]}
    assert client.post("/v1/recommend?explain=true", json=small).status_code == 200
    big = {"profile": {f"f{i}": "x" for i in range(50)},
           "visits": [{"diagnoses": ["d1"] * 10, "medications": ["m1"]}] * 100}  # fmt: skip
    response = client.post("/v1/recommend?explain=true", json={"patients": [big] * 12})
    assert response.status_code == 413 and "explain=true" in response.json()["detail"][0]["message"]


def test_parse_explain() -> None:
    assert parse_explain({}) == 0 and parse_explain({"explain": "false"}) == 0
    assert parse_explain({"explain": "TRUE"}) == 5
    assert parse_explain({"explain": "on", "explain_items": "50"}) == 50


def test_cli_recommend_explain(tmp_path_factory: pytest.TempPathFactory) -> None:
    from typer.testing import CliRunner

    from leader.cli import app

    run = trained_run(tmp_path_factory)
    file = tmp_path_factory.mktemp("in") / "p.json"
    file.write_text(json.dumps(PATIENT))
    result = CliRunner().invoke(
        app, ["recommend", "--run", str(run), "--patients", str(file), "--explain",
              "--explain-items", "2"]  # fmt: skip
    )
    assert result.exit_code == 0, result.output
    (answer,) = json.loads(result.stdout)["results"]
    assert answer["explanations"] and all(len(e["because"]) <= 2 for e in answer["explanations"])


def test_openapi_documents_the_bounded_explain_parameters(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/recommend"]["post"]
    schemas = {p["name"]: p["schema"] for p in operation["parameters"]}
    assert schemas["explain"]["type"] == "boolean" and schemas["explain"]["default"] is False
    assert (schemas["explain_items"]["minimum"], schemas["explain_items"]["maximum"]) == (1, 50)
    # the service lists the profile fields the page asks for
    assert client.get("/v1/model").json()["profile_fields"] == ["gender", "age_band", "insurance"]
