"""Recommending with a trained model: input parsing, validation, ranked output, DDI warnings.

LEADER (Liu et al., arXiv 2402.02803) predicts the medication set of a visit from the
visit's diagnoses and procedures, the patient's earlier visits and profile. This module
turns user input (JSON / JSONL patients, validated against ``patient.schema.json``, which
ships with the package) into :class:`~leader.data.store.Sample` objects, asks any model
with ``predict_proba`` for probabilities, and formats per patient: the ranked drugs, the
recommended set at the run's threshold (optionally thinned by the DDI safety layer,
:mod:`leader.safety`), the interacting pairs in that set and the codes the model ignored.
With a ``calibration.json`` beside the model (:mod:`leader.calibration`) the probabilities
shown are calibrated (each drug's own ``score`` kept beside them; thresholds apply to the
score), and ``miss_rate`` adds the conformal set of :mod:`leader.conformal`.

>>> rec = Recommender(LeaderStudent.from_pretrained("runs/student"))      # doctest: +SKIP
>>> rec.recommend([{"visits": [{"diagnoses": ["4019"], "procedures": []}]}])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from leader.data.store import Sample, Visit, Vocabulary
from leader.errors import LeaderError
from leader.safety import DEFAULT_MARGIN, ddi_safe_select

INPUT_KINDS: tuple[tuple[str, str], ...] = (
    ("diagnosis", "diagnoses"),
    ("procedure", "procedures"),
    ("medication", "medications"),
)
DEFAULT_TOP = 20  # ranked drugs listed per patient (0 = all)
MAX_BATCH = 1000  # patients per request / per ``{"patients": [...]}`` document
MAX_PROBLEMS = 10  # schema problems reported per patient (validation stops there)
MAX_DEPTH = 8  # containers nested in one patient record (the schema needs 4)
MAX_UNKNOWN_LISTED = 20  # unknown codes listed per result (all are counted)


class Predictor(Protocol):
    """What recommending needs: a model and its decision (``leader.models.Deployed``)."""

    @property
    def vocab(self) -> Vocabulary: ...

    @property
    def ddi_pairs(self) -> list[tuple[str, str]]: ...

    @property
    def ddi_source(self) -> str: ...

    @property
    def threshold(self) -> float: ...

    def predict_proba(self, samples: Sequence[Sample]) -> np.ndarray: ...  # (N, drugs)


# ------------------------------------------------------------------------------- schema
@cache
def patient_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of one patient, as shipped with the package."""
    text = resources.files("leader").joinpath("patient.schema.json").read_text("utf-8")
    return json.loads(text)  # type: ignore[no-any-return]


def batch_schema(max_batch: int = MAX_BATCH) -> dict[str, Any]:
    """Schema of ``{"patients": [patient, ...]}`` (the patient schema inlined)."""
    return {
        "type": "object",
        "required": ["patients"],
        "additionalProperties": False,
        "properties": {
            "patients": {
                "type": "array",
                "minItems": 1,
                "maxItems": max_batch,
                "items": inline_refs(patient_schema()),
            }
        },
    }


def inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The schema with its local ``#/$defs/...`` references inlined (for OpenAPI)."""
    defs = schema.get("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                target = resolve(defs[node["$ref"].removeprefix("#/$defs/")])
                rest = {k: resolve(v) for k, v in node.items() if k != "$ref"}
                return {**target, **rest}
            return {k: resolve(v) for k, v in node.items() if k not in ("$defs", "$schema", "$id")}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)  # type: ignore[no-any-return]


@cache
def _validator() -> Any:
    import jsonschema

    schema = patient_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # Inlined $refs validate the same documents about twice as fast.
    return jsonschema.Draft202012Validator(inline_refs(schema))


def json_path(parts: Iterable[str | int], root: str = "$") -> str:
    """``["visits", 0, "diagnoses"]`` -> ``$.visits[0].diagnoses``."""
    out = root
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


@dataclass(frozen=True)
class InputProblem:
    """One invalid field: which patient, where (JSON path inside the patient), what."""

    patient: int
    path: str
    message: str

    def __str__(self) -> str:
        return f"patient {self.patient}: {self.path}: {self.message}"


def validate_patient(record: Any, index: int, limit: int = MAX_PROBLEMS) -> list[InputProblem]:
    """Schema problems of one patient record (empty when valid), at most ``limit``.

    A quick check accepts typical valid records without walking the schema (about 20x
    faster); anything it does not accept is judged, and explained, by jsonschema, which
    stops at the first ``limit`` problems (so the cost is bounded by the record's size,
    never by its number of errors). Records nested deeper than any valid one are refused
    before jsonschema sees them (its messages ``repr`` the offending value).
    """
    if _quick_check()(record):
        return []
    narrowed, kept = _narrow(record)
    deep = _too_deep(narrowed, MAX_DEPTH)
    if deep is not None:
        where = json_path(_restore(deep, kept))
        return [InputProblem(index, where, f"nested deeper than {MAX_DEPTH} levels")]
    errors = list(islice(_validator().iter_errors(narrowed), limit))
    paths = [_restore(list(error.absolute_path), kept) for error in errors]
    found = sorted(zip(paths, errors, strict=True), key=lambda pe: [str(x) for x in pe[0]])
    return [InputProblem(index, json_path(path), _short(e.message)) for path, e in found]


def _narrow(record: Any) -> tuple[Any, _Kept]:
    """The record with only what the quick check refuses: its failing visits, and in
    those only the failing codes of each code list (with the kept indices).

    jsonschema then walks those, not the thousands of valid visits and codes around them:
    a request whose one error is at its end costs a few checks, not the request's size. A
    visit or code the quick check accepts is valid (it never accepts more than the schema)
    and list lengths are kept within the schema's limits, so the problems are the same.
    """
    quick = _quick_check()
    visits = record.get("visits") if isinstance(record, dict) else None
    if (
        not isinstance(visits, list)
        or not quick.visits_range[0] <= len(visits) <= quick.visits_range[1]
    ):
        return record, _Kept(None, {})
    kept = [i for i, visit in enumerate(visits) if not quick.visit(visit)] or [0]
    codes_kept: dict[tuple[int, str], list[int]] = {}
    narrowed_visits = []
    for position, i in enumerate(kept):
        visit = visits[i]
        if isinstance(visit, dict):
            visit = dict(visit)
            for key in quick.code_keys:
                codes = visit.get(key)
                if isinstance(codes, list) and len(codes) <= quick.max_codes:
                    bad = [j for j, code in enumerate(codes) if not quick.code(code)]
                    visit[key] = [codes[j] for j in bad]
                    codes_kept[(position, key)] = bad
        narrowed_visits.append(visit)
    return {**record, "visits": narrowed_visits}, _Kept(kept, codes_kept)


@dataclass(frozen=True)
class _Kept:
    """Where the narrowed record's visits and codes were in the original record."""

    visits: list[int] | None
    codes: dict[tuple[int, str], list[int]]


def _restore(path: list[Any], kept: _Kept) -> list[Any]:
    """A narrowed record's error path, with the indices of the original record."""
    if kept.visits is None or len(path) < 2 or path[0] != "visits" or type(path[1]) is not int:
        return path
    position = path[1]
    path[1] = kept.visits[position]
    if len(path) > 3 and type(path[3]) is int and (position, path[2]) in kept.codes:
        path[3] = kept.codes[(position, path[2])][path[3]]
    return path


def _too_deep(document: Any, limit: int) -> list[str | int] | None:
    """The path of the first container nested deeper than ``limit`` (None when within it).

    Iterative (a deep document must not exhaust the interpreter's stack) and stops at once.
    """
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, dict | list) and len(path) >= limit:
            return path
        if isinstance(node, dict):
            stack.extend((value, [*path, str(key)]) for key, value in node.items())
        elif isinstance(node, list):
            stack.extend((value, [*path, i]) for i, value in enumerate(node))
    return None


@dataclass(frozen=True)
class _QuickCheck:
    """``check(record)``, and ``visit(visit)`` for one visit, never accepting more than the
    schema; ``visits_range``: the schema's (minItems, maxItems) of ``visits``; ``code`` for
    one code of the lists ``code_keys`` (at most ``max_codes`` long)."""

    record: Callable[[Any], bool]
    visit: Callable[[Any], bool]
    visits_range: tuple[int, int]
    code: Callable[[Any], bool]
    code_keys: tuple[str, ...]
    max_codes: int

    def __call__(self, record: Any) -> bool:
        return self.record(record)


@cache
def _quick_check() -> _QuickCheck:
    """A predicate that accepts only records the schema accepts (never more).

    Limits are read from the shipped schema; tests compare it with jsonschema on random
    documents. When it says False the record may still be valid: jsonschema decides.
    """
    schema = inline_refs(patient_schema())
    visits = schema["properties"]["visits"]
    profile = schema["properties"]["profile"]
    visit = visits["items"]
    codes = visit["properties"]["diagnoses"]
    code = codes["items"]
    id_len = schema["properties"]["id"]["maxLength"]
    id_min, id_max = schema["properties"]["id"]["minimum"], schema["properties"]["id"]["maximum"]
    visit_id_len = visit["properties"]["id"]["maxLength"]
    visit_id = visit["properties"]["id"]
    if (visit_id["minimum"], visit_id["maximum"]) != (id_min, id_max):
        raise RuntimeError("patient.schema.json: visit and patient id ranges differ")
    time_len = visit["properties"]["time"]["maxLength"]
    patient_keys = frozenset(schema["properties"])
    visit_keys = frozenset(visit["properties"])
    code_kinds = tuple(k for k in visit["properties"] if k not in ("id", "time"))
    if schema["required"] != ["visits"] or visit["required"] != ["diagnoses"]:
        raise RuntimeError("patient.schema.json changed: update _quick_check")
    min_code, max_code, max_codes = code["minLength"], code["maxLength"], codes["maxItems"]

    def ident(value: Any, longest: int) -> bool:
        if type(value) is int:
            return bool(id_min <= value <= id_max)
        return type(value) is str and len(value) <= longest

    def code_list(value: Any) -> bool:
        return (
            type(value) is list
            and len(value) <= max_codes
            and all(type(c) is str and min_code <= len(c) <= max_code for c in value)
        )

    def check_visit(v: Any) -> bool:
        if type(v) is not dict or "diagnoses" not in v or not v.keys() <= visit_keys:
            return False
        if "id" in v and not ident(v["id"], visit_id_len):
            return False
        if "time" in v and not (type(v["time"]) is str and len(v["time"]) <= time_len):
            return False
        return all(code_list(v[k]) for k in code_kinds if k in v)

    def check(record: Any) -> bool:
        if type(record) is not dict or "visits" not in record:
            return False
        if not record.keys() <= patient_keys:
            return False
        if "id" in record and not ident(record["id"], id_len):
            return False
        if "profile" in record:
            p = record["profile"]
            if type(p) is not dict or len(p) > profile["maxProperties"]:
                return False
            names, values = profile["propertyNames"], profile["additionalProperties"]
            for key, value in p.items():
                if not names["minLength"] <= len(key) <= names["maxLength"]:
                    return False
                if type(value) is not str or len(value) > values["maxLength"]:
                    return False
        v = record["visits"]
        if type(v) is not list or not visits["minItems"] <= len(v) <= visits["maxItems"]:
            return False
        return all(check_visit(x) for x in v)

    def one_code(value: Any) -> bool:
        return type(value) is str and min_code <= len(value) <= max_code

    visits_range = (visits["minItems"], visits["maxItems"])
    return _QuickCheck(check, check_visit, visits_range, one_code, code_kinds, max_codes)


def _short(message: str, limit: int = 200) -> str:
    return message if len(message) <= limit else message[: limit - 3] + "..."


# ------------------------------------------------------------------------------- JSON
class BadJSON(ValueError):
    """A document that is not strict JSON; ``path`` is where (``$`` for the whole text)."""

    def __init__(self, message: str, path: str = "$") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


def _refuse_constant(name: str) -> Any:
    raise BadJSON(f"not valid JSON: {name} is not a JSON number")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)
# A lone surrogate can only come from a \uD800-\uDFFF escape (raw ones are not UTF-8).
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def loads(data: bytes | str) -> Any:
    """Parse strict JSON (RFC 8259: UTF-8, no NaN/Infinity) or raise :class:`BadJSON`.

    Everything a hostile text can make Python's parser raise becomes BadJSON: bytes that
    are not UTF-8, nesting deeper than the parser's recursion limit, integers of more than
    4,300 digits, and strings holding a lone surrogate (valid JSON, but not encodable
    text: answering with it would fail), reported with their JSON path.
    """
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadJSON(f"not UTF-8 text (byte {exc.start}); send UTF-8 JSON") from None
    else:
        text = data
    try:
        document = _DECODER.decode(text.removeprefix("\ufeff"))
    except BadJSON:
        raise
    except json.JSONDecodeError as exc:
        raise BadJSON(f"not valid JSON: {exc}") from None
    except RecursionError:
        raise BadJSON("not valid JSON here: nested too deeply") from None
    except ValueError as exc:  # e.g. "Exceeds the limit (4300 digits) for integer string"
        raise BadJSON(f"not valid JSON here: {_short(str(exc), 120)}") from None
    if _SURROGATE_ESCAPE.search(text):
        where = _lone_surrogate(document)
        if where is not None:
            raise BadJSON("a lone UTF-16 surrogate (\\uD800-\\uDFFF) is not text", json_path(where))
    return document


def _lone_surrogate(document: Any) -> list[str | int] | None:
    """The path of the first string (value or key) holding a lone surrogate, or None."""
    stack: list[tuple[Any, list[str | int]]] = [(document, [])]
    while stack:
        node, path = stack.pop()
        if isinstance(node, str):
            if _SURROGATE.search(node):
                return path
        elif isinstance(node, dict):
            for key, value in node.items():
                if _SURROGATE.search(key):
                    return [*path, key.encode("utf-8", "backslashreplace").decode("ascii")]
                stack.append((value, [*path, key]))
        elif isinstance(node, list):
            stack.extend((value, [*path, i]) for i, value in enumerate(node))
    return None


# ------------------------------------------------------------------------------- files
def read_patients(path: str | os.PathLike[str]) -> list[Any]:
    """Patient records from a JSON file (one patient, a list, or ``{"patients": [...]}``)
    or a JSONL file (one patient per line). Records are not validated here; every
    problem with the file is a LeaderError naming it (and the line, for JSONL)."""
    file = Path(path)
    if not file.is_file():
        raise LeaderError(f"{file}: no such file; give a JSON or JSONL file of patients")
    try:
        raw = file.read_bytes()
    except OSError as exc:
        raise LeaderError(
            f"{file}: cannot be read ({exc.strerror}); check its permissions"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LeaderError(
            f"{file}: not UTF-8 text (byte {exc.start}); give a UTF-8 JSON or JSONL file"
        ) from None
    if file.suffix.lower() in (".jsonl", ".ndjson"):
        return _read_jsonl(file, text)
    try:
        data = loads(text)
    except BadJSON as exc:
        if exc.message.startswith("not valid JSON: Extra data"):  # several documents: JSONL
            return _read_jsonl(file, text)
        where = "" if exc.path == "$" else f"{exc.path}: "
        raise LeaderError(f"{file}: {where}{exc.message}; see `leader recommend --help`") from None
    records = split_document(data)
    if records is None:
        raise LeaderError(
            f"{file}: expected a patient object, a list of patients or "
            f'{{"patients": [...]}}; got {type(data).__name__}'
        )
    if not records:
        raise LeaderError(f"{file}: no patients in this file")
    return records


def _read_jsonl(file: Path, text: str) -> list[Any]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(loads(line))
        except BadJSON as exc:
            where = "" if exc.path == "$" else f"{exc.path}: "
            raise LeaderError(f"{file}: line {number}: {where}{exc.message}") from None
    if not records:
        raise LeaderError(f"{file}: no patients in this file")
    return records


def count_items(records: Sequence[Any]) -> tuple[int, int]:
    """(visits, codes) in all records, whatever their shape (what is not a list counts 0).

    Costs one step per visit, not per code: the server checks it before validating.
    """
    visits_seen = codes_seen = 0
    for record in records:
        visits = record.get("visits") if isinstance(record, dict) else None
        if not isinstance(visits, list):
            continue
        visits_seen += len(visits)
        for visit in visits:
            if isinstance(visit, dict):
                for _, key in INPUT_KINDS:
                    codes = visit.get(key)
                    if isinstance(codes, list):
                        codes_seen += len(codes)
    return visits_seen, codes_seen


def split_document(data: Any) -> list[Any] | None:
    """The patient records of a parsed document, or None when it has no known shape."""
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        if "patients" in data and "visits" not in data:
            patients = data["patients"]
            return patients if isinstance(patients, list) else None
        return [data]
    return None


# ------------------------------------------------------------------------------- model input
@dataclass
class Prepared:
    """One validated patient turned into a model sample, with the codes that were ignored."""

    index: int
    patient_id: str | int | None
    sample: Sample
    unknown: list[dict[str, Any]] = field(default_factory=list)  # the first MAX_UNKNOWN_LISTED
    unknown_count: int = 0  # every ignored code


class Recommender:
    """A model plus everything needed to turn its probabilities into recommendations.

    Precomputes the code indices, drug names and the DDI matrix once.
    """

    def __init__(self, model: Predictor, margin: float = DEFAULT_MARGIN) -> None:
        self.model = model
        self.margin = margin  # safety layer: fraction of the head-room that is "far above"
        self.threshold = float(model.threshold)
        self.calibration = getattr(model, "calibration", None)  # leader.calibration.Calibration
        vocab = model.vocab
        self.known = {kind: frozenset(vocab.codes[kind]) for kind, _ in INPUT_KINDS}
        self.drugs: list[str] = list(vocab.codes["medication"])
        self.drug_names = [vocab.name("medication", code) for code in self.drugs]
        index = vocab.index("medication")
        self.ddi = np.zeros((len(self.drugs), len(self.drugs)), dtype=bool)
        for a, b in model.ddi_pairs:
            if a in index and b in index and a != b:
                self.ddi[index[a], index[b]] = self.ddi[index[b], index[a]] = True
        # Higher-index partners of every drug: warnings without a (drugs x drugs) scan.
        self.interacts = [set(np.flatnonzero(row).tolist()) for row in self.ddi]
        self.partners: list[list[int]] = [
            (np.flatnonzero(row[i + 1 :]) + i + 1).tolist() for i, row in enumerate(self.ddi)
        ]

    # ------------------------------------------------------------------ input
    def prepare(self, record: Any, index: int, strict: bool = False) -> Prepared:
        """Validate one record and build its sample; raise LeaderError naming the problem."""
        problems = validate_patient(record, index)
        if problems:
            raise InvalidInput(problems)
        unknown: list[dict[str, Any]] = []
        unknown_count = 0
        visits: list[Visit] = []
        last = len(record["visits"]) - 1
        for position, visit in enumerate(record["visits"]):
            codes: dict[str, tuple[str, ...]] = {}
            for kind, key in INPUT_KINDS:
                if kind == "medication" and position == last:
                    codes[key] = ()  # the current visit's drugs are the prediction target
                    continue
                given = visit.get(key, [])
                kept = tuple(c for c in given if c in self.known[kind])
                if len(kept) != len(given):
                    unknown_count += len(given) - len(kept)
                    for code in given:
                        if len(unknown) == MAX_UNKNOWN_LISTED:
                            break  # counted, not echoed: the answer stays small
                        if code not in self.known[kind]:
                            unknown.append({"visit": position, "kind": kind, "code": code})
                codes[key] = tuple(dict.fromkeys(kept))
            visits.append(
                Visit(
                    visit_id=str(visit.get("id", position)),
                    time=visit.get("time"),
                    diagnoses=codes["diagnoses"],
                    procedures=codes["procedures"],
                    medications=codes["medications"],
                )
            )
        if strict and unknown:
            raise InvalidInput(
                [
                    InputProblem(
                        index,
                        json_path(["visits", u["visit"], dict(INPUT_KINDS)[u["kind"]]]),
                        f"unknown {u['kind']} code {u['code']!r} (the model's vocabulary "
                        "lacks it; drop --strict to ignore unknown codes)",
                    )
                    for u in unknown[:10]
                ]
            )
        patient_id = record.get("id")
        name = str(patient_id) if patient_id is not None else f"patient-{index}"
        sample = Sample(
            sample_id=f"{name}:{visits[-1].visit_id}",
            patient_id=name,
            history=tuple(visits[:-1]),
            current=visits[-1],
            profile={str(k): str(v) for k, v in record.get("profile", {}).items()},
        )
        return Prepared(index, patient_id, sample, unknown, unknown_count)

    def prepare_all(self, records: Sequence[Any], strict: bool = False) -> list[Prepared]:
        """All records; collects the problems of every patient before raising."""
        prepared: list[Prepared] = []
        problems: list[InputProblem] = []
        for index, record in enumerate(records):
            try:
                prepared.append(self.prepare(record, index, strict))
            except InvalidInput as exc:
                problems.extend(exc.problems)
        if problems:
            raise InvalidInput(problems)
        return prepared

    # ------------------------------------------------------------------ output
    def predict(self, prepared: Sequence[Prepared]) -> np.ndarray:
        """Probabilities (N, drugs) for prepared patients."""
        if not prepared:
            return np.zeros((0, len(self.drugs)), dtype=np.float32)
        import torch

        with torch.inference_mode():  # no autograd bookkeeping at all (faster than no_grad)
            prob = np.asarray(self.model.predict_proba([p.sample for p in prepared]))
        if prob.shape != (len(prepared), len(self.drugs)):
            raise RuntimeError(
                f"model returned shape {prob.shape}; expected ({len(prepared)}, {len(self.drugs)})"
            )
        return prob

    def conformal_threshold(self, miss_rate: float) -> float:
        """The conformal threshold for ``miss_rate`` (LeaderError without a risk curve)."""
        curve = getattr(self.calibration, "conformal", None)
        if curve is None:
            raise LeaderError(
                "miss_rate needs the conformal risk curve of calibration.json beside the model; "
                "fit it with `leader calibrate --run RUN --dataset DATASET`"
            )
        return float(curve.threshold(miss_rate))

    def select(self, prob: np.ndarray, ddi_safe: bool) -> np.ndarray:
        """Boolean recommended sets (N, drugs): threshold, or the DDI-safe selection."""
        if ddi_safe:
            return ddi_safe_select(prob, self.ddi, self.threshold, self.margin)
        return np.asarray(prob) >= self.threshold

    def format(
        self,
        prepared: Prepared,
        prob: Sequence[float],
        chosen: Sequence[bool],
        ddi_safe: bool,
        top: int = DEFAULT_TOP,
        raw: Sequence[float] | None = None,
        conformal: tuple[dict[str, Any], Sequence[bool]] | None = None,
    ) -> dict[str, Any]:
        """One patient's result: ranked drugs, recommended set, DDI warnings, unknown codes.

        ``prob``: the probabilities shown (calibrated when ``raw``, the model's own scores,
        is given); ``conformal``: the conformal set's header and membership.
        Plain Python on lists (one row of :meth:`results`): numpy calls on such short rows
        cost more than they save, and in the server each one may wait for the GIL.
        """
        # Most probable first; sorted(reverse=True) is stable, so ties keep index order.
        order = sorted(range(len(prob)), key=prob.__getitem__, reverse=True)
        ranked = order if top <= 0 else order[:top]
        recommended = [i for i in order if chosen[i]]
        pairs = [(a, b) for a in sorted(recommended) for b in self.partners[a] if chosen[b]]
        result: dict[str, Any] = {
            "index": prepared.index,
            "id": prepared.patient_id,
            "threshold": self.threshold,
            "ddi_safe": ddi_safe,
            "recommended": [self._drug(i, prob, raw) for i in recommended],
            "ranked": [
                {**self._drug(i, prob, raw), "recommended": bool(chosen[i])} for i in ranked
            ],
            "ddi_warnings": [
                {"drugs": [self._drug(a), self._drug(b)], "source": self.model.ddi_source}
                for a, b in pairs
            ],
            "unknown_codes": prepared.unknown,
            "unknown_count": prepared.unknown_count,
        }
        if raw is not None:
            result["calibration"] = self.calibration.method  # type: ignore[union-attr]
        if conformal is not None:
            head, in_set = conformal
            members = [self._drug(i, prob, raw) for i in order if in_set[i]]
            result["conformal"] = {**head, "set": members}
        if ddi_safe:
            scores = prob if raw is None else raw
            withheld = [i for i in order if scores[i] >= self.threshold and not chosen[i]]
            result["withheld_for_ddi"] = [
                {
                    **self._drug(i, prob, raw),
                    "interacts_with": [
                        self.drugs[j] for j in recommended if j in self.interacts[i]
                    ],
                }
                for i in withheld
            ]
        return result

    def _drug(
        self, i: int, prob: Sequence[float] | None = None, raw: Sequence[float] | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.drugs[i], "name": self.drug_names[i]}
        if prob is not None:
            out["probability"] = round(float(prob[i]), 4)
        if raw is not None:
            out["score"] = round(float(raw[i]), 4)  # the model's own, before calibration
        return out

    def recommend(
        self,
        records: Sequence[Any],
        strict: bool = False,
        ddi_safe: bool = False,
        top: int = DEFAULT_TOP,
        miss_rate: float | None = None,
    ) -> list[dict[str, Any]]:
        """Results for raw patient records (validated here), in input order."""
        if miss_rate is not None:
            self.conformal_threshold(miss_rate)  # refuse before any work
        prepared = self.prepare_all(records, strict)
        return self.results(prepared, self.predict(prepared), ddi_safe, top, miss_rate)

    def results(
        self,
        prepared: Sequence[Prepared],
        prob: np.ndarray,
        ddi_safe: bool,
        top: int,
        miss_rate: float | None = None,
    ) -> list[dict[str, Any]]:
        """Formatted results for prepared patients and their probabilities (N, drugs)."""
        return list(self.iter_results(prepared, prob, ddi_safe, top, miss_rate))

    def iter_results(
        self,
        prepared: Sequence[Prepared],
        prob: np.ndarray,
        ddi_safe: bool,
        top: int,
        miss_rate: float | None = None,
    ) -> Iterator[dict[str, Any]]:
        """:meth:`results` one at a time (a server can encode each and let it go)."""
        chosen = self.select(prob, ddi_safe).tolist()
        scores = np.asarray(prob, dtype=np.float64)
        rows = scores.tolist()
        raw: list[list[float]] | None = None
        if self.calibration is not None and self.calibration.method != "none":
            raw, rows = rows, self.calibration.apply(scores).tolist()
        in_set: list[list[bool]] | None = None
        head: dict[str, Any] = {}
        if miss_rate is not None:
            t = self.conformal_threshold(miss_rate)
            in_set = (scores >= t).tolist()
            head = {"miss_rate": miss_rate, "threshold": t, "full_set": t <= 0.0,
                    "calibration_visits": self.calibration.conformal.n}  # type: ignore[union-attr]  # fmt: skip
        for r, p in enumerate(prepared):
            conformal = (head, in_set[r]) if in_set is not None else None
            row_raw = raw[r] if raw is not None else None
            yield self.format(p, rows[r], chosen[r], ddi_safe, top, row_raw, conformal)


class InvalidInput(LeaderError):
    """Input that does not match the patient schema (or, with --strict, unknown codes)."""

    def __init__(self, problems: list[InputProblem]) -> None:
        self.problems = problems
        shown = "; ".join(str(p) for p in problems[:5])
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        super().__init__(f"invalid patient input: {shown}{more}")


# ------------------------------------------------------------------------------- runs
def load_model(run_dir: str | os.PathLike[str]) -> Predictor:
    """The trained student of a run folder (safetensors + JSON; nothing is unpickled)."""
    root = Path(run_dir)
    if not (root / "config.json").is_file():
        raise LeaderError(
            f"{root}: not a student run folder (no config.json); train one with "
            "`leader student train` and pass its --out folder"
        )
    from leader.models import load_deployed

    return load_deployed(root)


def run_metrics(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's metrics.json ({} when absent or unreadable)."""
    path = Path(run_dir) / "metrics.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}
