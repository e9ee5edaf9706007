"""FHIR R4 in: reading exports, codings by system, ``leader prepare fhir``, FHIR in the service.

Fixtures are written here with the shapes of the FHIR R4 specification's examples
(Patient with US Core race / ethnicity, Encounter, Condition, Procedure, MedicationRequest,
MedicationStatement / MedicationAdministration with R4's ``context``), referenced as
``Encounter/id`` (Bulk Data) and ``urn:uuid:`` (Synthea's Bundles); a test checks that
each one validates against the ``fhir.resources`` R4B models.
"""

from __future__ import annotations

import gzip
import json
import random
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from leader.cli import app
from leader.data.sources.fhir import read_fhir
from leader.data.store import VisitDataset
from leader.errors import LeaderError
from leader.fhir import (
    FhirInput,
    choose_coding,
    iter_resources,
    patient_document,
    read_drug_map,
)

SNOMED = "http://snomed.info/sct"
ICD9 = "http://hl7.org/fhir/sid/icd-9-cm"
ICD10 = "http://hl7.org/fhir/sid/icd-10-cm"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ATC = "http://www.whocc.no/atc"
CPT = "http://www.ama-assn.org/go/cpt"
LOCAL = "http://example.org/local-codes"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition"
OMB = "urn:oid:2.16.840.1.113883.6.238"


# ------------------------------------------------------------------------------ fixtures
def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    found = {"system": system, "code": code}
    if display:
        found["display"] = display
    return found


def patient(pid: str, gender: str = "female", birth: str = "1950-05-02") -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": pid,
        "extension": [
            {
                "url": f"{US_CORE}/us-core-race",
                "extension": [
                    {"url": "ombCategory", "valueCoding": coding(OMB, "2106-3", "White")},
                    {"url": "text", "valueString": "White"},
                ],
            },
            {
                "url": f"{US_CORE}/us-core-ethnicity",
                "extension": [
                    {"url": "text", "valueString": "Not Hispanic or Latino"},
                ],
            },
        ],
        "name": [{"use": "official", "family": "Chalmers", "given": ["Peter"]}],
        "gender": gender,
        "birthDate": birth,
    }


def encounter(eid: str, subject: str, start: str, status: str = "finished") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": eid,
        "status": status,
        "class": coding("http://terminology.hl7.org/CodeSystem/v3-ActCode", "IMP", "inpatient"),
        "subject": {"reference": subject},
        "period": {"start": start, "end": start},
    }


def condition(
    cid: str,
    subject: str,
    encounter_ref: str | None,
    *codes: dict[str, str],
    verification: str = "confirmed",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Condition",
        "id": cid,
        "clinicalStatus": {
            "coding": [coding("http://terminology.hl7.org/CodeSystem/condition-clinical", "active")]
        },
        "verificationStatus": {
            "coding": [
                coding("http://terminology.hl7.org/CodeSystem/condition-ver-status", verification)
            ]
        },
        "code": {"coding": list(codes)},
        "subject": {"reference": subject},
    }
    if encounter_ref is not None:
        resource["encounter"] = {"reference": encounter_ref}
    return resource


def procedure(
    pid: str, subject: str, encounter_ref: str, *codes: dict[str, str], status: str = "completed"
) -> dict[str, Any]:
    return {
        "resourceType": "Procedure",
        "id": pid,
        "status": status,
        "code": {"coding": list(codes)},
        "subject": {"reference": subject},
        "encounter": {"reference": encounter_ref},
        "performedDateTime": "2013-04-05",
    }


def med_request(
    mid: str,
    subject: str,
    encounter_ref: str | None,
    *codes: dict[str, str],
    status: str = "active",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": mid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {"coding": list(codes)},
        "subject": {"reference": subject},
        "authoredOn": "2015-01-15",
    }
    if encounter_ref is not None:
        resource["encounter"] = {"reference": encounter_ref}
    return resource


def med_statement(
    sid: str, subject: str, context: str, *codes: dict[str, str], status: str = "active"
) -> dict[str, Any]:
    return {  # R4: the visit is ``context``
        "resourceType": "MedicationStatement",
        "id": sid,
        "status": status,
        "medicationCodeableConcept": {"coding": list(codes)},
        "subject": {"reference": subject},
        "context": {"reference": context},
        "effectiveDateTime": "2015-01-23",
    }


def med_administration(
    aid: str, subject: str, context: str, medication: str, status: str = "completed"
) -> dict[str, Any]:
    return {  # R4: ``context``; the drug is a contained Medication (as the spec's example)
        "resourceType": "MedicationAdministration",
        "id": aid,
        "contained": [
            {
                "resourceType": "Medication",
                "id": "med",
                "code": {"coding": [coding(RXNORM, medication)]},
            }
        ],
        "status": status,
        "medicationReference": {"reference": "#med"},
        "subject": {"reference": subject},
        "context": {"reference": context},
        "effectiveDateTime": "2015-01-15T14:30:00+01:00",
    }


def medication(mid: str, *codes: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "Medication", "id": mid, "code": {"coding": list(codes)}}


def bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    """A transaction Bundle as Synthea writes it: ``urn:uuid:`` full URLs."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{r['id']}",
                "resource": r,
                "request": {"method": "POST", "url": r["resourceType"]},
            }
            for r in resources
        ],
    }


def write_ndjson(folder: Path, resources: list[dict[str, Any]], gz: bool = True) -> Path:
    """Bulk Data output: one file per resource type."""
    folder.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        by_type.setdefault(r["resourceType"], []).append(r)
    for kind, items in by_type.items():
        text = "".join(json.dumps(r) + "\n" for r in items)
        if gz:
            with gzip.open(folder / f"{kind}.ndjson.gz", "wt", encoding="utf-8") as handle:
                handle.write(text)
        else:
            (folder / f"{kind}.ndjson").write_text(text, encoding="utf-8")
    return folder


def one_patient() -> list[dict[str, Any]]:
    """p1: e1 (2010, zone -05:00), e2 (2012, UTC); every kind of coded resource."""
    subject, e1, e2 = "urn:uuid:p1", "urn:uuid:e1", "urn:uuid:e2"
    return [
        patient("p1"),
        encounter("e1", subject, "2010-01-01T22:00:00-05:00"),
        encounter("e2", subject, "2012-06-01T10:00:00Z"),
        condition("c1", subject, e1, coding(SNOMED, "38341003"), coding(ICD9, "401.9")),
        condition("c2", subject, e1, coding(ICD10, "E11.9", "Type 2 diabetes")),
        condition("c3", subject, e2, coding(ICD9, "428.0")),
        procedure("x1", subject, e1, coding(ICD9, "38.93")),
        med_request("m1", subject, e1, coding(RXNORM, "860975")),
        med_request("m2", subject, e1, coding(ATC, "C09AA05")),
        med_request("m3", subject, e2, coding(RXNORM, "314076")),
    ]


# ------------------------------------------------------------------------------ codings
def test_choose_coding_preference_and_the_stored_form() -> None:
    concept = {
        "coding": [
            coding(SNOMED, "44054006"),
            coding("https://hl7.org/fhir/sid/icd-10-cm/", " e11.9 "),
            coding("urn:oid:2.16.840.1.113883.6.103", "250.00"),
        ]
    }
    assert choose_coding(concept, ["icd9", "icd10", "snomed"]) == ("icd9", "25000")
    assert choose_coding(concept, ["icd10", "icd9"]) == ("icd10", "E119")
    assert choose_coding(concept, ["snomed"]) == ("snomed", "44054006")
    assert choose_coding(concept, ["cpt", "rxnorm"]) is None
    assert choose_coding({"coding": [coding(LOCAL, "X")]}, ["icd9"]) is None
    assert choose_coding({"text": "no coding"}, ["icd9"]) is None
    assert choose_coding(None, ["icd9"]) is None


def test_patient_document_from_a_synthea_bundle() -> None:
    resources = one_patient()
    document, problems = patient_document(resources)
    assert problems == [] or all(p.reason == "unmapped_drug" for p in problems)
    assert [v["id"] for v in document["visits"]] == ["e1", "e2"]
    first, current = document["visits"]
    # default preference: ICD-9 first; several systems -> system:code, ICD without dots
    assert first["diagnoses"] == ["icd9:4019", "icd10:E119"]
    assert first["procedures"] == ["icd9:3893"]
    assert first["medications"] == ["C09A"]  # ATC cut to ATC3; RxNorm needs a drug map
    assert current["diagnoses"] == ["icd9:4280"]
    assert document["id"] == "p1"
    # born 1950-05-02; first visit 2010-01-02 03:00 UTC
    assert document["profile"] == {
        "gender": "F",
        "race": "White",
        "ethnicity": "Not Hispanic or Latino",
        "age_band": "50-59",
    }
    assert [p.resource for p in problems] == ["MedicationRequest/m1", "MedicationRequest/m3"]


def test_patient_document_named_encounter_and_errors() -> None:
    resources = one_patient()
    from leader.fhir import DocumentOptions

    document, _ = patient_document(resources, DocumentOptions(encounter="e1"))
    assert [v["id"] for v in document["visits"]] == ["e1"]
    with pytest.raises(LeaderError, match="encounter 'nope' not found"):
        patient_document(resources, DocumentOptions(encounter="nope"))
    with pytest.raises(LeaderError, match="2 patients"):
        patient_document([*resources, patient("p2")])
    with pytest.raises(LeaderError, match="no Encounter"):
        patient_document([patient("p1")])


# ------------------------------------------------------------------------------ reading
def test_iter_resources_bundles_ndjson_and_gzip(tmp_path: Path) -> None:
    resources = one_patient()
    (tmp_path / "bundles").mkdir()
    (tmp_path / "bundles" / "p1.json").write_text(json.dumps(bundle(resources)))
    write_ndjson(tmp_path / "bulk", resources, gz=True)
    write_ndjson(tmp_path / "plain", resources, gz=False)
    for folder in ("bundles", "bulk", "plain"):
        found = sorted(r["id"] for r in iter_resources(tmp_path / folder))
        assert found == sorted(r["id"] for r in resources), folder
    assert len(list(iter_resources(tmp_path / "bundles" / "p1.json"))) == len(resources)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Condition.ndjson").write_text('{"resourceType": "Condition"}\n{oops\n')
    with pytest.raises(LeaderError, match=r"Condition.ndjson: line 2: not JSON"):
        list(iter_resources(bad))
    (tmp_path / "empty").mkdir()
    with pytest.raises(LeaderError, match="no FHIR files"):
        list(iter_resources(tmp_path / "empty"))


def drop_export() -> list[dict[str, Any]]:
    """Every reason a resource is dropped, once each (Bulk Data references)."""
    s, e1, e2 = "Patient/p1", "Encounter/e1", "Encounter/e2"
    return [
        patient("p1", gender="male", birth="1980-07-01"),
        encounter("e1", s, "2020-03-01T23:30:00+02:00"),
        encounter("e2", s, "2021-03-01"),
        encounter("e-void", s, "2020-05-01", status="entered-in-error"),
        encounter("e-cancelled", s, "2020-05-02", status="cancelled"),
        {**encounter("e-nobody", s, "2020-05-03"), "subject": None},
        {**encounter("e-notime", s, "2020-05-04"), "period": {}},
        condition("c-ok", s, e1, coding(ICD10, "I10")),
        condition("c-again", s, e1, coding(ICD10, "I10")),  # a repeat in the same visit
        condition("c-noenc", s, None, coding(ICD10, "I10")),
        condition("c-lost", s, "Encounter/elsewhere", coding(ICD10, "I10")),
        condition("c-void", s, e1, coding(ICD10, "I10"), verification="entered-in-error"),
        condition("c-refuted", s, e1, coding(ICD10, "J45"), verification="refuted"),
        condition("c-local", s, e1, coding(LOCAL, "HTN-1")),
        condition("c-e2", s, e2, coding(ICD10, "E78.5")),
        procedure("x-ok", s, e1, coding(CPT, "99213")),
        procedure("x-notdone", s, e1, coding(CPT, "99214"), status="not-done"),
        med_request("m-ok", s, e1, coding(RXNORM, "860975")),
        med_request("m-cancelled", s, e1, coding(RXNORM, "314076"), status="cancelled"),
        med_request("m-unmapped", s, e1, coding(RXNORM, "999999999")),
        med_request("m-noenc", s, None, coding(RXNORM, "860975")),
        {
            **med_request("m-ref", s, e2),
            "medicationCodeableConcept": None,
            "medicationReference": {"reference": "Medication/med1"},
        },
        {
            **med_request("m-badref", s, e2),
            "medicationCodeableConcept": None,
            "medicationReference": {"reference": "Medication/absent"},
        },
        medication("med1", coding(RXNORM, "197361")),
        med_statement("s-ok", s, e2, coding(ATC, "N02BE01")),
        med_statement("s-nottaken", s, e2, coding(ATC, "N02BE01"), status="not-taken"),
        med_administration("a-ok", s, e2, "617314"),
        med_administration("a-void", s, e2, "617314", status="entered-in-error"),
        {"resourceType": "Observation", "id": "o1", "status": "final", "code": {}},
    ]


def test_every_drop_reason_is_counted(tmp_path: Path, test_data: Path) -> None:
    folder = write_ndjson(tmp_path / "bulk", drop_export())
    raw = read_fhir(folder, drug_level="atc3", resources=test_data / "resources")
    c = raw.counts
    assert c["encounter_resources"] == 6
    assert c["encounter_resources_entered_in_error"] == 1
    assert c["encounter_resources_cancelled"] == 1
    assert c["encounter_resources_without_patient"] == 1
    assert raw.funnel[1]["rule"] == "visit time missing or unparseable"
    assert raw.funnel[1]["visits_removed"] == 1
    assert c["condition_resources"] == 8
    assert c["condition_resources_without_encounter"] == 1
    assert c["condition_resources_encounter_not_found"] == 1
    assert c["condition_resources_entered_in_error"] == 1
    assert c["condition_resources_refuted"] == 1
    assert c["condition_resources_without_known_system"] == 1
    assert c["unknown_systems"] == {LOCAL: 1}
    assert c["diagnosis_rows_duplicate"] == 1
    assert c["procedure_resources_not_done"] == 1
    assert c["medicationrequest_resources_cancelled"] == 1
    assert c["medicationrequest_resources_unmapped"] == 1
    assert c["medicationrequest_resources_without_encounter"] == 1
    assert c["medicationrequest_resources_medication_not_found"] == 1
    assert c["medicationstatement_resources_not_taken"] == 1
    assert c["medicationadministration_resources_entered_in_error"] == 1
    assert c["other_resources"] == {"Observation": 1}
    assert c["visit_times_converted_to_utc"] == 1
    assert set(raw.codes["visit_id"]) == {"e1", "e2"}


def test_drop_reasons_with_one_system_per_kind(tmp_path: Path, test_data: Path) -> None:
    folder = write_ndjson(tmp_path / "bulk", drop_export(), gz=False)
    raw = read_fhir(
        folder,
        diagnosis_system="icd10",
        procedure_system="cpt",
        drug_level="atc3",
        resources=test_data / "resources",
    )
    codes = {(v, k): sorted(g["code"]) for (v, k), g in raw.codes.groupby(["visit_id", "kind"])}
    assert codes == {
        ("e1", "diagnosis"): ["I10"],  # one system: bare, without dots
        ("e1", "procedure"): ["99213"],
        ("e1", "medication"): ["A10B"],  # RxNorm 860975 (metformin) -> A10B
        ("e2", "diagnosis"): ["E785"],
        # Medication/med1 (amlodipine) -> C08C; ATC N02BE01 -> N02B; 617314 -> C10A
        ("e2", "medication"): ["C08C", "C10A", "N02B"],
    }
    times = dict(zip(raw.visits["visit_id"], raw.visits["time"].astype(str), strict=True))
    assert times == {"e1": "2020-03-01 21:30:00", "e2": "2021-03-01 00:00:00"}  # UTC
    profiles = raw.visit_profiles
    assert profiles is not None
    row = profiles.set_index("visit_id").loc["e1"]
    assert (row["gender"], row["race"], row["age_band"]) == ("M", "White", "30-39")
    assert profiles.set_index("visit_id").loc["e2", "age_band"] == "40-49"


def test_rxnorm_level_keeps_codes_and_atc3_needs_a_map(tmp_path: Path) -> None:
    folder = write_ndjson(tmp_path / "bulk", drop_export())
    raw = read_fhir(folder)  # --drug-level rxnorm: codes as given, ATC codings not taken
    drugs = sorted(raw.codes.loc[raw.codes["kind"] == "medication", "code"])
    assert drugs == ["197361", "617314", "860975", "999999999"]
    assert raw.counts["medicationstatement_resources_without_known_system"] == 1
    with pytest.raises(LeaderError, match="--drug-level atc3 maps RxNorm"):
        read_fhir(folder, drug_level="atc3")
    with pytest.raises(LeaderError, match="unknown code system 'icd11'"):
        read_fhir(folder, diagnosis_system="icd11")
    drug_map = tmp_path / "map.csv"
    drug_map.write_text("rxcui,atc3\n999999999,Z99A\n860975,a10b\n")
    raw = read_fhir(folder, drug_level="atc3", drug_map=drug_map)
    assert raw.counts["medicationrequest_resources_unmapped"] == 1  # Medication/med1 (197361)
    drugs = sorted(raw.codes.loc[raw.codes["kind"] == "medication", "code"])
    assert drugs == ["A10B", "N02B", "Z99A"]  # ATC codings need no map


def test_drug_map_of_the_shipped_resources(test_data: Path) -> None:
    mapping = read_drug_map(test_data / "resources" / "rxcui2atc4.csv")
    assert mapping["860975"] == "A10B"  # metformin (Synthea's RxNorm code)
    assert mapping["314076"] == "C09A"  # lisinopril
    assert all(len(atc) == 4 for atc in mapping.values())


def test_fixture_resources_validate_as_fhir(tmp_path: Path) -> None:
    from fhir.resources.R4B import get_fhir_model_class

    for resource in [
        *one_patient(),
        *drop_export()[:4],
        med_statement("s", "Patient/p", "Encounter/e", coding(ATC, "N02BE01")),
        med_administration("a", "Patient/p", "Encounter/e", "617314"),
        medication("m", coding(RXNORM, "1")),
    ]:
        clean = {k: v for k, v in resource.items() if v is not None}
        get_fhir_model_class(clean["resourceType"]).model_validate(clean)
    folder = write_ndjson(
        tmp_path / "bulk",
        [
            *one_patient(),
            {
                "resourceType": "Condition",
                "id": "bad",
                "code": {"coding": "x"},
                "encounter": {"reference": "Encounter/e1"},
            },
        ],
    )
    raw = read_fhir(folder, validate=True)
    assert raw.counts["condition_resources_invalid"] == 1
    assert raw.counts["invalid_examples"][0].startswith("Condition/bad: ")


# ------------------------------------------------------------------------------ prepare + train
DIAGNOSES = [
    (coding(SNOMED, "44054006", "Diabetes mellitus type 2"), coding(ICD10, "E11.9")),
    (coding(SNOMED, "59621000", "Essential hypertension"), coding(ICD10, "I10")),
    (coding(SNOMED, "55822004", "Hyperlipidemia"),),
    (coding(SNOMED, "49436004", "Atrial fibrillation"), coding(ICD10, "I48.91")),
    (coding(SNOMED, "195662009", "Acute viral pharyngitis"),),
]
PROCEDURES = [coding(SNOMED, "430193006"), coding(SNOMED, "73761001"), coding(SNOMED, "171207006")]
DRUGS = ["860975", "314076", "197361", "617314", "309362", "834061", "313782"]


def synthea_like(patients: int, seed: int = 0) -> list[dict[str, list[dict[str, Any]]]]:
    """Per-patient resources: 2-4 encounters each, codes that predict the drugs."""
    rng = random.Random(seed)
    out = []
    for p in range(patients):
        pid = f"pat-{p:03d}"
        subject = f"urn:uuid:{pid}"
        resources = [
            patient(pid, rng.choice(["male", "female"]), f"{rng.randint(1930, 1990)}-03-04")
        ]
        for v in range(rng.randint(2, 4)):
            eid = f"{pid}-enc-{v}"
            enc = f"urn:uuid:{eid}"
            resources.append(
                encounter(eid, subject, f"{2010 + v}-0{rng.randint(1, 9)}-10T08:00:00+01:00")
            )
            chosen = rng.sample(range(len(DIAGNOSES)), 2)
            for i in chosen:
                resources.append(condition(f"{eid}-c{i}", subject, enc, *DIAGNOSES[i]))
            resources.append(procedure(f"{eid}-x", subject, enc, rng.choice(PROCEDURES)))
            for i in chosen:
                resources.append(med_request(f"{eid}-m{i}", subject, enc, coding(RXNORM, DRUGS[i])))
            resources.append(
                med_request(f"{eid}-m9", subject, enc, coding(RXNORM, rng.choice(DRUGS)))
            )
        out.append({"id": [pid], "resources": resources})  # type: ignore[dict-item]
    return out


@pytest.fixture(scope="module")
def fhir_run(tmp_path_factory: pytest.TempPathFactory, test_data: Path) -> tuple[Path, Path]:
    """``leader prepare fhir`` on Synthea-like Bundles, then a short student train."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("fhir")
    export = root / "output" / "fhir"
    export.mkdir(parents=True)
    for item in synthea_like(40):
        pid = item["id"][0]
        (export / f"{pid}.json").write_text(json.dumps(bundle(item["resources"])))
    res = test_data / "resources"
    result = CliRunner().invoke(
        app,
        [
            "prepare",
            "fhir",
            "--data",
            str(export),
            "--out",
            str(root / "ds"),
            "--drug-level",
            "atc3",
            "--resources",
            str(res),
            "--ddi",
            str(res / "ddi_atc3_pairs.csv"),
            "--atc-names",
            str(res / "atc_names_who_2021-12-03.csv"),
        ],
    )
    assert result.exit_code == 0, result.output
    train = CliRunner().invoke(
        app,
        [
            "student",
            "train",
            "--dataset",
            str(root / "ds"),
            "--out",
            str(root / "run"),
            "--epochs",
            "2",
            "--dim",
            "16",
            "--heads",
            "2",
            "--ffn",
            "32",
            "--set",
            "train.batch_size=8",
        ],
    )
    assert train.exit_code == 0, train.output
    return root / "ds", root / "run"


def test_prepare_fhir_end_to_end_trains(fhir_run: tuple[Path, Path]) -> None:
    dataset_dir, run = fhir_run
    dataset = VisitDataset.load(dataset_dir)
    stats = dataset.stats
    assert stats["patients"] == 40
    assert set(dataset.vocab.codes["medication"]) <= {
        "A10B",
        "C09A",
        "C08C",
        "C10A",
        "B01A",
        "J01C",
        "N02B",
    }
    assert "icd10:E119" in dataset.vocab.codes["diagnosis"]  # ICD-10 preferred to SNOMED
    assert "snomed:55822004" in dataset.vocab.codes["diagnosis"]  # SNOMED only
    assert dataset.vocab.name("diagnosis", "snomed:55822004") == "Hyperlipidemia"
    assert stats["ddi_pairs"] > 0
    assert (run / "metrics.json").is_file()


# ------------------------------------------------------------------------------ the service
def _service_bundle() -> tuple[dict[str, Any], dict[str, Any]]:
    """A Bundle for a new patient and the JSON patient it stands for."""
    subject = "urn:uuid:new"
    resources = [
        patient("new", "male", "1961-02-03"),
        encounter("v1", subject, "2019-04-01T09:00:00Z"),
        encounter("v2", subject, "2020-04-01T09:00:00Z"),
        condition("k1", subject, "urn:uuid:v1", *DIAGNOSES[0]),
        condition("k2", subject, "urn:uuid:v1", *DIAGNOSES[2]),
        procedure("k3", subject, "urn:uuid:v1", PROCEDURES[0]),
        med_request("k4", subject, "urn:uuid:v1", coding(RXNORM, "860975")),
        med_request("k5", subject, "urn:uuid:v1", coding(ATC, "C09AA05")),
        condition("k6", subject, "urn:uuid:v2", *DIAGNOSES[1]),
        med_request("k7", subject, "urn:uuid:v2", coding(RXNORM, "617314")),  # current: target
    ]
    expected = {
        "id": "new",
        "profile": {
            "gender": "M",
            "race": "White",
            "ethnicity": "Not Hispanic or Latino",
            "age_band": "50-59",
        },
        "visits": [
            {
                "id": "v1",
                "diagnoses": ["icd10:E119", "snomed:55822004"],
                "procedures": ["snomed:430193006"],
                "medications": ["A10B", "C09A"],
            },
            {"id": "v2", "diagnoses": ["icd10:I10"], "procedures": []},
        ],
    }
    return bundle(resources), expected


def test_service_answers_a_bundle_as_the_json_patient(
    fhir_run: tuple[Path, Path], test_data: Path
) -> None:
    """The real ``leader serve`` process, started as a user would (``--fhir-drug-map``)."""
    _, run = fhir_run
    drug_map = str(test_data / "resources" / "rxcui2atc4.csv")
    with serving(run, "--fhir-drug-map", drug_map) as client:
        _check_service(client)


@contextmanager
def serving(run: Path, *extra: str) -> Iterator[httpx.Client]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    command = [sys.executable, "-m", "leader", "serve", "--run", str(run), "--port", str(port)]
    server = subprocess.Popen([*command, *extra], stderr=subprocess.DEVNULL)
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        deadline = time.monotonic() + 60
        while True:
            try:
                if client.get("/v1/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        yield client
    finally:
        server.terminate()
        server.wait(timeout=20)


def _check_service(client: httpx.Client) -> None:
    fhir_bundle, expected = _service_bundle()
    as_json = client.post("/v1/recommend?top=0", json=expected)
    as_fhir = client.post("/v1/recommend?top=0", json=fhir_bundle)
    assert as_json.status_code == as_fhir.status_code == 200, as_fhir.text
    assert as_json.json()["unknown_count"] == 0  # every code of the JSON patient is known
    assert as_fhir.json() == as_json.json()
    listed = client.post("/v1/recommend?top=0", json=[e["resource"] for e in fhir_bundle["entry"]])
    assert listed.json() == as_json.json()
    # an unknown system in an earlier visit: reported like an unknown code, or 422 if strict
    odd = json.loads(json.dumps(fhir_bundle))
    odd["entry"].append(
        {
            "fullUrl": "urn:uuid:k8",
            "resource": condition("k8", "urn:uuid:new", "urn:uuid:v1", coding(LOCAL, "HTN-1")),
        }
    )
    answer = client.post("/v1/recommend", json=odd).json()
    assert answer["unknown_count"] == 1
    assert answer["unknown_codes"] == [
        {
            "visit": 0,
            "kind": "diagnosis",
            "code": "HTN-1",
            "system": LOCAL,
            "reason": "unknown_system",
            "resource": "Condition/k8",
        }
    ]
    strict = client.post("/v1/recommend?strict=true", json=odd)
    assert strict.status_code == 422
    assert "Condition/k8" in strict.text and LOCAL in strict.text
    two = json.loads(json.dumps(fhir_bundle))
    two["entry"].append({"resource": patient("other")})
    refused = client.post("/v1/recommend", json=two)
    assert refused.status_code == 422 and "2 patients" in refused.text
    empty = client.post("/v1/recommend", json={"resourceType": "Bundle", "type": "collection"})
    assert empty.status_code == 422 and "no Encounter" in empty.text


def test_fhir_input_matches_a_mimic_vocabulary() -> None:
    """Bare ICD-9 codes (MIMIC-III's vocabulary): an ICD-9 coding wins over SNOMED."""
    known = {"diagnosis": {"4019", "25000"}, "procedure": {"3893"}, "medication": {"A10B", "C09A"}}
    converter = FhirInput(known, {"860975": "A10B"})
    document, problems = converter.convert(bundle(one_patient()))
    first, current = document["visits"]
    assert first["diagnoses"] == ["4019", "E119"]  # E11.9 is not in it: reported as unknown
    assert first["procedures"] == ["3893"]
    assert first["medications"] == ["A10B", "C09A"]
    assert current["diagnoses"] == ["4280"]
    assert [p.reason for p in converter.unknown(document, problems)] == []


HOSTILE: list[Any] = [
    None,
    0,
    -1.5,
    True,
    "",
    "x",
    "0001-01-01T00:00:00+01:00",
    "9999-12-31T23:59:59-14:00",
    [],
    [1, "a"],
    {},
    {"reference": 7},
    {"coding": "x"},
    {"coding": [{"system": 1, "code": ["a"]}]},
]


def test_malformed_fields_are_errors_or_ignored_never_crashes() -> None:
    """Every field (and every field one level down) of every resource replaced by junk:
    conversion either works or raises LeaderError; its output is a valid or a rejected
    patient, never an exception (the service answers 200 or 422, not 500)."""
    from leader.recommend import validate_patient

    known = {"diagnosis": {"4019"}, "procedure": {"3893"}, "medication": {"A10B"}}
    converter = FhirInput(known, {"860975": "A10B"})
    base = one_patient()
    tried = 0
    for position, resource in enumerate(base):
        paths: list[tuple[str, ...]] = [(k,) for k in resource]
        paths += [(k, j) for k, v in resource.items() if isinstance(v, dict) for j in v]
        for path in paths:
            for junk in HOSTILE:
                changed = json.loads(json.dumps(base))
                target = changed[position]
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = junk
                tried += 1
                try:
                    document, problems = converter.convert(bundle(changed))
                except LeaderError:
                    continue
                validate_patient(document, 0)
                converter.unknown(document, problems)
    assert tried > 500


def test_any_rxnorm_coding_may_map_and_a_named_encounter_may_not_have_started() -> None:
    """Real exports list several RxNorm codings (SCD, SBD, ingredient): the first that maps
    wins. A CDS Hooks call names an encounter that may have no period.start yet."""
    from leader.fhir import DocumentOptions

    resources = one_patient()
    resources[7] = med_request(
        "m1", "urn:uuid:p1", "urn:uuid:e1", coding(RXNORM, "1"), coding(RXNORM, "860975")
    )
    planned = {**encounter("e3", "urn:uuid:p1", "2013-01-01"), "status": "in-progress"}
    del planned["period"]
    options = DocumentOptions(drug_map={"860975": "A10B"}, encounter="e3")
    document, problems = patient_document([*resources, planned], options)
    assert document["visits"][0]["medications"] == ["A10B", "C09A"]
    assert [v["id"] for v in document["visits"]] == ["e1", "e2", "e3"]
    assert "time" not in document["visits"][-1]
    assert [p.reason for p in problems] == ["unmapped_drug"]  # 314076 is not in this map


def test_mixed_vocabulary_reports_unknown_codes_with_their_system_and_caps_visits() -> None:
    known = {"diagnosis": {"icd10:E119"}, "procedure": {"icd9:3893"}, "medication": {"A10B"}}
    converter = FhirInput(known)
    document, _ = converter.convert(bundle(one_patient()))
    first, current = document["visits"]
    assert first["diagnoses"] == ["icd9:4019", "icd10:E119"]  # 4019 unknown: said with system
    assert first["procedures"] == ["icd9:3893"]
    assert current["diagnoses"] == ["icd9:4280"]
    from leader.fhir import DocumentOptions

    document, problems = patient_document(one_patient(), DocumentOptions(max_visits=1))
    assert [v["id"] for v in document["visits"]] == ["e2"]  # the latest kept
    assert "visits_truncated" in [p.reason for p in problems]


def test_resources_of_another_patient_are_not_used() -> None:
    other = "urn:uuid:someone-else"
    resources = [
        *one_patient(),
        encounter("e9", other, "2020-01-01T00:00:00Z"),  # would be the latest visit
        condition("c9", other, "urn:uuid:e2", coding(ICD9, "999.9")),
    ]
    document, problems = patient_document(resources)
    assert [v["id"] for v in document["visits"]] == ["e1", "e2"]
    assert document["visits"][1]["diagnoses"] == ["icd9:4280"]
    assert [p.resource for p in problems if p.reason == "another_patient"] == [
        "Encounter/e9",
        "Condition/c9",
    ]


def test_cli_prints_the_resources_set_aside(tmp_path: Path, test_data: Path) -> None:
    folder = write_ndjson(tmp_path / "bulk", drop_export())
    args = ["prepare", "fhir", "--data", str(folder), "--out", str(tmp_path / "ds")]
    args += ["--drug-level", "atc3", "--resources", str(test_data / "resources")]
    result = CliRunner().invoke(app, args, terminal_width=200)
    assert result.exit_code == 0, result.output
    for counter in (
        "condition_resources_refuted",
        "condition_resources_encounter_not_found",
        "condition_resources_without_known_system",
        "encounter_resources_cancelled",
        "medicationrequest_resources_unmapped",
        "medicationstatement_resources_not_taken",
        "procedure_resources_not_done",
    ):
        assert counter in result.output, counter
    stats = VisitDataset.load(tmp_path / "ds").stats
    assert stats["condition_resources_refuted"] == 1
    assert VisitDataset.load(tmp_path / "ds").manifest["source"] == "fhir"
