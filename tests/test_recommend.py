"""`leader recommend`: input files, the schema, unknown codes, output, DDI warnings."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from conftest import make_tiny_dataset
from leader.cli import app
from leader.data.store import Sample, VisitDataset
from leader.errors import LeaderError
from leader.recommend import (
    InvalidInput,
    Recommender,
    _quick_check,
    batch_schema,
    json_path,
    load_model,
    patient_schema,
    read_patients,
    validate_patient,
)
from test_serve_fixtures import eager_copy, trained_run

PATIENT = {
    "id": "p1",
    "profile": {"gender": "F", "age_band": "60-69", "insurance": "Medicare"},
    "visits": [
        {"diagnoses": ["d1", "d2"], "procedures": ["x1"], "medications": ["m1", "m2"]},
        {"diagnoses": ["d2", "d3"], "procedures": ["x2"], "medications": ["m2", "m3"]},
        {"diagnoses": ["d1"], "procedures": ["x1", "x2"]},
    ],
}


@pytest.fixture()
def student_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return trained_run(tmp_path_factory)


@pytest.fixture()
def eager_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return eager_copy(tmp_path_factory)


@pytest.fixture()
def tiny_dir(student_run: Path) -> Path:
    return student_run.parent / "tiny"


class FixedModel:
    """Pure formatting tests only: fixed probabilities over the tiny vocabulary."""

    def __init__(self, prob: Sequence[float], threshold: float = 0.5) -> None:
        tiny = make_tiny_dataset()
        self.vocab = tiny.vocab
        self.ddi_pairs = tiny.ddi_pairs  # m1-m4, m2-m5
        self.ddi_source = "test"
        self.threshold = threshold
        self.prob = np.asarray(prob, dtype=np.float32)
        self.seen: list[Sample] = []

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray:
        self.seen.extend(samples)
        return np.tile(self.prob, (len(samples), 1))


# ---------------------------------------------------------------------------- schema
def test_schema_ships_with_the_package_and_is_valid() -> None:
    schema = patient_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator.check_schema(batch_schema())
    jsonschema.validate(PATIENT, schema)
    jsonschema.validate({"patients": [PATIENT]}, batch_schema())


@pytest.mark.parametrize(
    ("record", "path", "message"),
    [
        ({"visits": [{"diagnoses": ["d1", 7]}]}, "$.visits[0].diagnoses[1]", "not of type"),
        ({"visits": []}, "$.visits", "non-empty"),
        ({"visit": []}, "$", "'visits' is a required property"),
        ({"visits": [{"procedures": ["x1"]}]}, "$.visits[0]", "'diagnoses' is a required"),
        ({"visits": [{"diagnoses": [""]}]}, "$.visits[0].diagnoses[0]", "non-empty"),
        ({"profile": {"age": 70}, "visits": [{"diagnoses": []}]}, "$.profile.age", "string"),
        ({"visits": [{"diagnoses": [], "drugs": []}]}, "$.visits[0]", "'drugs' was unexpected"),
        ([1, 2], "$", "not of type 'object'"),
    ],
)
def test_schema_errors_name_patient_and_path(record: Any, path: str, message: str) -> None:
    problems = validate_patient(record, 4)
    assert problems, record
    assert problems[0].patient == 4
    assert problems[0].path == path
    assert message in problems[0].message


def _text(*sizes: int) -> st.SearchStrategy[str]:
    """Strings at and around the schema's length limits."""
    return st.sampled_from(sizes).flatmap(lambda n: st.text("abé😀", min_size=n, max_size=n))


ANY = st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=3)
CODE_LISTS = st.lists(_text(0, 1, 64, 65), max_size=3) | st.just(["d"] * 1001) | ANY
IDS = st.integers() | _text(0, 200, 201) | st.floats(allow_nan=False) | ANY
VISITS = st.fixed_dictionaries(
    {},
    optional={
        "diagnoses": CODE_LISTS,
        "procedures": CODE_LISTS,
        "medications": CODE_LISTS,
        "id": IDS,
        "time": _text(0, 64, 65) | ANY,
        "extra": ANY,
    },
)
RECORDS = (
    st.fixed_dictionaries(
        {},
        optional={
            "visits": st.lists(VISITS, max_size=3) | st.just([{"diagnoses": []}] * 501) | ANY,
            "id": IDS,
            "profile": st.dictionaries(_text(0, 1, 100, 101), _text(0, 200, 201) | ANY, max_size=3)
            | st.just({str(i): "x" for i in range(51)})
            | ANY,
            "other": ANY,
        },
    )
    | ANY
)


@settings(max_examples=400, deadline=None)
@given(record=RECORDS)
def test_quick_check_agrees_with_jsonschema(record: Any) -> None:
    valid = jsonschema.Draft202012Validator(patient_schema()).is_valid(record)
    quick = _quick_check()(record)
    assert not quick or valid, "the quick check accepted what the schema rejects"
    if valid and not _has_float_id(record):  # 1.0 is a JSON Schema integer; quick says no
        assert quick, "the quick check rejected a valid record (slow path for nothing)"
    problems = validate_patient(record, 0)
    assert (problems == []) == valid
    # Narrowed to the failing visits, validation reports problems jsonschema reports too.
    full = {json_path(e.absolute_path) for e in _full_validator().iter_errors(record)}
    assert {p.path for p in problems} <= full


@cache
def _full_validator() -> Any:
    return jsonschema.Draft202012Validator(patient_schema())


def test_validation_walks_only_the_failing_visits() -> None:
    good = {"diagnoses": ["d1"] * 1000, "procedures": ["x1"] * 1000}
    record = {"id": "p", "visits": [good] * 299 + [{"diagnoses": ["d1", 7]}]}
    start = time.process_time()
    problems = validate_patient(record, 4)
    narrowed = time.process_time() - start
    assert [(p.patient, p.path) for p in problems] == [(4, "$.visits[299].diagnoses[1]")]
    start = time.process_time()
    full = list(_full_validator().iter_errors(record))
    assert [json_path(e.absolute_path) for e in full] == ["$.visits[299].diagnoses[1]"]
    assert narrowed < (time.process_time() - start) / 5  # 600,000 valid codes not walked
    bad_id = validate_patient({**record, "id": True}, 0)
    assert [p.path for p in bad_id] == ["$.id", "$.visits[299].diagnoses[1]"]


def _visit(**fields: Any) -> dict[str, Any]:
    return {"visits": [{"diagnoses": ["d1"], **fields}]}


@pytest.mark.parametrize(
    ("valid", "invalid"),
    [
        (_visit(time="t" * 64), _visit(time="t" * 65)),
        (_visit(id="i" * 200), _visit(id="i" * 201)),
        (_visit(id=3), _visit(id=True)),
        (_visit(procedures=["p" * 64]), _visit(procedures=["p" * 65])),
        (_visit(medications=["m"]), _visit(medications=[""])),
        (_visit(diagnoses=["d"] * 1000), _visit(diagnoses=["d"] * 1001)),
        ({**_visit(), "id": "p" * 200}, {**_visit(), "id": "p" * 201}),
        ({**_visit(), "profile": {"k" * 100: "v" * 200}},
         {**_visit(), "profile": {"k": "v" * 201}}),
        ({**_visit(), "profile": {"k": "v"}}, {**_visit(), "profile": {"k" * 101: "v"}}),
        ({**_visit(), "profile": {str(i): "v" for i in range(50)}},
         {**_visit(), "profile": {str(i): "v" for i in range(51)}}),
        ({"visits": [{"diagnoses": []}] * 500}, {"visits": [{"diagnoses": []}] * 501}),
        ({"visits": [{"diagnoses": []}]}, {"visits": [{"procedures": []}]}),
    ],
)  # fmt: skip
def test_quick_check_limits(valid: dict[str, Any], invalid: dict[str, Any]) -> None:
    schema = jsonschema.Draft202012Validator(patient_schema())
    assert schema.is_valid(valid) and _quick_check()(valid)
    assert not schema.is_valid(invalid) and not _quick_check()(invalid)


def _has_float_id(record: Any) -> bool:
    ids = [record.get("id")] + [
        v.get("id") for v in record.get("visits", []) if isinstance(v, dict)
    ]
    return any(isinstance(i, float) for i in ids)


# ---------------------------------------------------------------------------- files
def test_read_patients_accepts_every_shape(tmp_path: Path) -> None:
    other = {"visits": [{"diagnoses": ["d4"]}]}
    shapes = {
        "one.json": PATIENT,
        "list.json": [PATIENT, other],
        "batch.json": {"patients": [PATIENT, other]},
    }
    for name, data in shapes.items():
        (tmp_path / name).write_text(json.dumps(data))
    (tmp_path / "many.jsonl").write_text(json.dumps(PATIENT) + "\n\n" + json.dumps(other) + "\n")
    (tmp_path / "many.json").write_text(json.dumps(PATIENT) + "\n" + json.dumps(other) + "\n")
    assert read_patients(tmp_path / "one.json") == [PATIENT]
    for name in ("list.json", "batch.json", "many.jsonl", "many.json"):
        assert read_patients(tmp_path / name) == [PATIENT, other], name


def test_read_patients_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(LeaderError, match="no such file"):
        read_patients(tmp_path / "absent.json")
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(PATIENT) + "\n{oops\n")
    with pytest.raises(LeaderError, match=r"bad.jsonl: line 2: not valid JSON"):
        read_patients(bad)
    scalar = tmp_path / "scalar.json"
    scalar.write_text("42")
    with pytest.raises(LeaderError, match="expected a patient object"):
        read_patients(scalar)


# ---------------------------------------------------------------------------- samples
def test_prepare_builds_history_and_lists_unknown_codes() -> None:
    rec = Recommender(FixedModel([0.1] * 5))
    record = {
        "id": 12,
        "visits": [
            {"diagnoses": ["d1", "zz"], "procedures": ["x1"], "medications": ["m1", "mX"]},
            {"diagnoses": ["d2", "d2"], "procedures": ["q9"], "medications": ["m3", "mY"]},
        ],
    }
    prepared = rec.prepare(record, 3)
    sample = prepared.sample
    assert prepared.patient_id == 12 and sample.patient_id == "12"
    assert [v.diagnoses for v in sample.history] == [("d1",)]
    assert sample.history[0].medications == ("m1",)
    assert sample.current.diagnoses == ("d2",) and sample.current.procedures == ()
    assert sample.current.medications == ()  # the current visit's drugs are never input
    assert sample.profile == {}
    assert prepared.unknown == [
        {"visit": 0, "kind": "diagnosis", "code": "zz"},
        {"visit": 0, "kind": "medication", "code": "mX"},
        {"visit": 1, "kind": "procedure", "code": "q9"},
    ]
    with pytest.raises(InvalidInput) as info:
        rec.prepare(record, 3, strict=True)
    text = str(info.value)
    assert "patient 3: $.visits[0].diagnoses: unknown diagnosis code 'zz'" in text
    assert "$.visits[1].procedures: unknown procedure code 'q9'" in text


def test_prepare_all_reports_every_bad_patient() -> None:
    rec = Recommender(FixedModel([0.1] * 5))
    good = {"visits": [{"diagnoses": ["d1"]}]}
    with pytest.raises(InvalidInput) as info:
        rec.prepare_all([good, {"visits": "no"}, good, {"visits": [{"diagnoses": [1]}]}])
    assert [(p.patient, p.path) for p in info.value.problems] == [
        (1, "$.visits"),
        (3, "$.visits[0].diagnoses[0]"),
    ]


# ---------------------------------------------------------------------------- output
def test_output_ranks_selects_and_warns_on_hand_made_probabilities() -> None:
    #                 m1    m2    m3    m4    m5
    model = FixedModel([0.9, 0.3, 0.55, 0.6, 0.05], threshold=0.5)
    rec = Recommender(model)
    [result] = rec.recommend([{"id": "a", "visits": [{"diagnoses": ["d1"]}]}], top=3)
    assert [d["code"] for d in result["ranked"]] == ["m1", "m4", "m3"]
    assert [d["recommended"] for d in result["ranked"]] == [True, True, True]
    assert result["recommended"] == [
        {"code": "m1", "name": "beta blocking agents", "probability": 0.9},
        {"code": "m4", "name": "diuretics", "probability": 0.6},
        {"code": "m3", "name": "m3", "probability": 0.55},
    ]
    assert result["ddi_warnings"] == [
        {
            "drugs": [
                {"code": "m1", "name": "beta blocking agents"},
                {"code": "m4", "name": "diuretics"},
            ],
            "source": "test",
        }
    ]
    assert result["threshold"] == 0.5 and result["id"] == "a" and "withheld_for_ddi" not in result
    [all_ranked] = rec.recommend([{"visits": [{"diagnoses": ["d1"]}]}], top=0)
    assert len(all_ranked["ranked"]) == 5


def test_ddi_safe_drops_the_less_probable_partner() -> None:
    model = FixedModel([0.9, 0.3, 0.55, 0.6, 0.05], threshold=0.5)
    [result] = Recommender(model).recommend([{"visits": [{"diagnoses": ["d1"]}]}], ddi_safe=True)
    assert [d["code"] for d in result["recommended"]] == ["m1", "m3"]
    assert result["ddi_warnings"] == []
    assert result["withheld_for_ddi"] == [
        {"code": "m4", "name": "diuretics", "probability": 0.6, "interacts_with": ["m1"]}
    ]
    # Both far above the threshold (>= 0.75 at margin 0.5): both kept, still warned.
    both = FixedModel([0.9, 0.3, 0.1, 0.8, 0.05], threshold=0.5)
    [kept] = Recommender(both).recommend([{"visits": [{"diagnoses": ["d1"]}]}], ddi_safe=True)
    assert [d["code"] for d in kept["recommended"]] == ["m1", "m4"]
    assert len(kept["ddi_warnings"]) == 1 and kept["withheld_for_ddi"] == []


# ---------------------------------------------------------------------------- real run
def test_real_run_matches_the_model_on_the_same_visits(student_run: Path, tiny_dir: Path) -> None:
    model = load_model(student_run)
    dataset = VisitDataset.load(tiny_dir)
    sample = next(s for s in dataset.samples(None, "all") if s.sample_id == "p1:v3")
    record = {
        "id": "p1",
        "profile": sample.profile,
        "visits": [
            {"diagnoses": list(v.diagnoses), "procedures": list(v.procedures),
             "medications": list(v.medications)}
            for v in (*sample.history, sample.current)
        ],
    }  # fmt: skip
    [result] = Recommender(model).recommend([record], top=0)
    expected = model.predict_proba([sample])[0]
    by_code = {d["code"]: d["probability"] for d in result["ranked"]}
    drugs = model.vocab.codes["medication"]
    assert by_code == {c: round(float(p), 4) for c, p in zip(drugs, expected, strict=True)}
    chosen = {c for c, p in zip(drugs, expected, strict=True) if p >= model.threshold}
    assert {d["code"] for d in result["recommended"]} == chosen
    assert result["threshold"] == model.threshold


def test_real_run_warns_about_interacting_recommendations(eager_run: Path) -> None:
    rec = Recommender(load_model(eager_run))
    [result] = rec.recommend([{"visits": [{"diagnoses": ["d1", "d4"], "procedures": ["x1"]}]}])
    assert len(result["recommended"]) == 5  # threshold 0
    pairs = {tuple(d["code"] for d in w["drugs"]) for w in result["ddi_warnings"]}
    assert pairs == {("m1", "m4"), ("m2", "m5")}
    assert all(w["source"] == "test" for w in result["ddi_warnings"])
    names = {d["code"]: d["name"] for w in result["ddi_warnings"] for d in w["drugs"]}
    assert names["m1"] == "beta blocking agents" and names["m5"] == "m5"
    strict = Recommender(load_model(eager_run), margin=1.0)  # never "both far above"
    [safe] = strict.recommend([{"visits": [{"diagnoses": ["d1", "d4"]}]}], ddi_safe=True)
    assert safe["ddi_warnings"] == [] and len(safe["withheld_for_ddi"]) == 2
    assert len(safe["recommended"]) == 3


# ---------------------------------------------------------------------------- CLI
def test_cli_recommend_writes_json_and_jsonl(student_run: Path, tmp_path: Path) -> None:
    patients = tmp_path / "patients.jsonl"
    other = {"id": "new", "visits": [{"diagnoses": ["d5", "nope"], "procedures": ["x1"]}]}
    patients.write_text(json.dumps(PATIENT) + "\n" + json.dumps(other) + "\n")
    runner = CliRunner()
    out = tmp_path / "out.json"
    args = ["recommend", "--run", str(student_run), "--patients", str(patients)]
    result = runner.invoke(app, [*args, "--out", str(out), "--top", "3", "--ddi-safe"])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["ddi_safe"] is True and document["ddi_source"] == "test"
    assert [r["id"] for r in document["results"]] == ["p1", "new"]
    assert all(len(r["ranked"]) == 3 for r in document["results"])
    assert document["results"][1]["unknown_codes"] == [
        {"visit": 0, "kind": "diagnosis", "code": "nope"}
    ]
    lines = tmp_path / "out.jsonl"
    assert runner.invoke(app, [*args, "--out", str(lines)]).exit_code == 0
    assert [json.loads(x)["id"] for x in lines.read_text().splitlines()] == ["p1", "new"]
    printed = runner.invoke(app, args)
    assert printed.exit_code == 0 and json.loads(printed.stdout)["results"][0]["id"] == "p1"


def test_cli_recommend_strict_and_bad_input_are_clear_errors(
    student_run: Path, tmp_path: Path
) -> None:
    patients = tmp_path / "p.json"
    patients.write_text(json.dumps([PATIENT, {"visits": [{"diagnoses": ["d1", "nope"]}]}]))
    args = ["recommend", "--run", str(student_run), "--patients", str(patients)]
    result = CliRunner().invoke(app, [*args, "--strict"])
    assert isinstance(result.exception, LeaderError)
    assert "patient 1: $.visits[0].diagnoses: unknown diagnosis code 'nope'" in str(
        result.exception
    )
    patients.write_text(json.dumps({"patients": [PATIENT, {"visits": [{"diagnoses": 5}]}]}))
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, LeaderError)
    assert "patient 1: $.visits[0].diagnoses: 5 is not of type 'array'" in str(result.exception)
    result = CliRunner().invoke(app, ["recommend", "--run", str(tmp_path), "--patients", "x"])
    assert isinstance(result.exception, LeaderError)


# ---------------------------------------------------------------------------- hostile CLI input
def _run_main(args: list[str], monkeypatch: pytest.MonkeyPatch) -> int:
    """``leader ARGS`` in this process through the real entry point; its exit code."""
    from leader.cli import main

    monkeypatch.setattr("sys.argv", ["leader", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return int(exit_info.value.code or 0)


HOSTILE_FILES: dict[str, tuple[bytes, str]] = {
    "binary.json": (bytes(range(256)) * 4, "not UTF-8 text (byte 128)"),
    "latin1.json": ('{"id": "café", "visits": [{"diagnoses": []}]}'.encode("latin-1"), "not UTF-8"),
    "nul.json": (b"\x00" * 64, "not valid JSON"),
    "deep.json": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "bigint.json": (b'{"id": ' + b"7" * 4400 + b', "visits": [{"diagnoses": []}]}', "4300 digits"),
    "surrogate.json": (b'{"visits": [{"diagnoses": ["\\ud800"]}]}', "$.visits[0].diagnoses[0]"),
    "surrogate.jsonl": (
        b'{"visits": [{"diagnoses": []}]}\n{"id": "\\udc00", "visits": []}\n',
        "line 2: $.id: a lone UTF-16 surrogate",
    ),
    "empty-batch.json": (b'{"patients": []}', "no patients"),
    "empty-list.json": (b"[]", "no patients"),
    "empty.json": (b"", "not valid JSON"),
    "nan.json": (b'{"id": NaN, "visits": [{"diagnoses": []}]}', "NaN is not a JSON number"),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_FILES))
def test_cli_bad_patient_files_are_one_error_line(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    content, expected = HOSTILE_FILES[name]
    file = tmp_path / name
    file.write_bytes(content)
    # No run folder: the file is refused before any model is loaded.
    code = _run_main(
        ["recommend", "--run", str(tmp_path / "norun"), "--patients", str(file)], monkeypatch
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert str(file) in err and expected in err, err
    assert "Traceback" not in err


def test_cli_bad_out_paths_are_one_error_line_before_any_work(
    student_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    patients = tmp_path / "p.json"
    patients.write_text(json.dumps(PATIENT))
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["recommend", "--run", str(tmp_path / "norun"), "--patients", str(patients), "--out"]
    for out, expected in [
        (tmp_path, "is a folder"),
        (tmp_path / "missing" / "out.json", "does not exist"),
        (blocker / "out.json", "is not a folder"),
    ]:
        code = _run_main([*args, str(out)], monkeypatch)
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and expected in err, err
    good = tmp_path / "out.json"
    args = ["recommend", "--run", str(student_run), "--patients", str(patients), "--out", str(good)]
    assert _run_main(args, monkeypatch) == 0
    assert json.loads(good.read_text())["results"][0]["id"] == "p1"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "a-file",
        "out.json",
        "p.json",
    ]  # no temp left
