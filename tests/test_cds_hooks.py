"""CDS Hooks 2.0 on a real trained run: discovery, the specification's example requests,
a Synthea-style FHIR prefetch, suggestions that validate as FHIR R4, DDI warnings, errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from leader.cds_hooks import (
    ATC_SYSTEM,
    PREFETCH,
    SOURCE_LABEL,
    SUMMARY_LIMIT,
    explanation_markdown,
)
from leader.serve import ServeConfig, create_app
from test_serve import AUTH, JSON_TYPE, TOKEN, _free_port, assert_error_shape
from test_serve_fixtures import REAL_CODES, real_coded_eager, real_coded_run

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "cds-hooks" / "order-select.json"
ORDER_SELECT = "/cds-services/leader-order-select"
PATIENT_VIEW = "/cds-services/leader-patient-view"
PATIENT = "Patient/1288992"

# The specification's "Calling a CDS Service" example request (CDS Hooks 2.0), verbatim.
SPEC_PATIENT_VIEW: dict[str, Any] = {
    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
    "fhirServer": "http://hooks.smarthealthit.org:9080",
    "hook": "patient-view",
    "fhirAuthorization": {
        "access_token": "some-opaque-fhir-access-token",
        "token_type": "Bearer",
        "expires_in": 300,
        "scope": "patient/Patient.read patient/Observation.read",
        "subject": "cds-service4",
    },
    "context": {"userId": "Practitioner/example", "patientId": "1288992", "encounterId": "89284"},
    "prefetch": {
        "patientToGreet": {
            "resourceType": "Patient",
            "gender": "male",
            "birthDate": "1925-12-23",
            "id": "1288992",
            "active": True,
        }
    },
}

# The order-select hook's R4 example context (its NutritionOrder and its amoxicillin
# MedicationRequest, RxNorm 617993), with a second draft order coded in ATC added: a beta
# blocker (C07AB02), a class the test model knows.
SPEC_ORDER_SELECT_CONTEXT: dict[str, Any] = {
    "userId": "PractitionerRole/123",
    "patientId": "1288992",
    "encounterId": "89284",
    "selections": [
        "NutritionOrder/pureeddiet-simple",
        "MedicationRequest/smart-MedicationRequest-103",
    ],
    "draftOrders": {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "resourceType": "NutritionOrder",
                    "id": "pureeddiet-simple",
                    "status": "draft",
                    "patient": {"reference": "Patient/1288992"},
                    "dateTime": "2014-09-17",
                    "orderer": {"reference": "Practitioner/example", "display": "Dr Adam Careful"},
                    "oralDiet": {
                        "type": [
                            {
                                "coding": [
                                    {
                                        "system": "http://snomed.info/sct",
                                        "code": "226211001",
                                        "display": "Pureed diet",
                                    }
                                ],
                                "text": "Pureed diet",
                            }
                        ]
                    },
                }
            },
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "smart-MedicationRequest-103",
                    "status": "draft",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [
                            {
                                "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                "code": "617993",
                                "display": "Amoxicillin 120 MG/ML / clavulanate potassium 8.58 "
                                "MG/ML Oral Suspension",
                            }
                        ],
                        "text": "Amoxicillin 120 MG/ML / clavulanate potassium 8.58 MG/ML Oral "
                        "Suspension",
                    },
                    "subject": {"reference": "Patient/1288992"},
                    "dosageInstruction": [{"text": "5 mL bid x 10 days"}],
                }
            },
            {
                "resource": {
                    "resourceType": "MedicationRequest",
                    "id": "draft-metoprolol",
                    "status": "draft",
                    "intent": "order",
                    "medicationCodeableConcept": {
                        "coding": [
                            {"system": ATC_SYSTEM, "code": "C07AB02", "display": "metoprolol"}
                        ]
                    },
                    "subject": {"reference": "Patient/1288992"},
                }
            },
        ],
    },
}


def synthea_prefetch() -> dict[str, Any]:
    """The prefetch a FHIR server holding a Synthea patient answers to our templates: two
    encounters (an earlier one with a prescription), SNOMED-coded conditions and procedures
    with an ICD-9-CM coding beside (as a mapped export has), RxNorm + ATC drugs, US Core race."""

    def ref(kind: str, rid: str) -> dict[str, str]:
        return {"reference": f"{kind}/{rid}"}

    def concept(*codings: tuple[str, str, str]) -> dict[str, Any]:
        return {"coding": [{"system": s, "code": c, "display": d} for s, c, d in codings]}

    snomed, icd9 = "http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-9-cm"
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"

    def encounter(rid: str, start: str, status: str) -> dict[str, Any]:
        return {
            "resourceType": "Encounter",
            "id": rid,
            "status": status,
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "type": [concept((snomed, "183452005", "Emergency hospital admission"))],
            "subject": ref("Patient", "1288992"),
            "period": {"start": start},
        }

    def condition(rid: str, encounter_id: str, snomed_code: str, icd: str, name: str) -> Any:
        return {
            "resourceType": "Condition",
            "id": rid,
            "clinicalStatus": concept(
                ("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active")
            ),
            "code": concept((snomed, snomed_code, name), (icd9, icd, name)),
            "subject": ref("Patient", "1288992"),
            "encounter": ref("Encounter", encounter_id),
            "onsetDateTime": "2023-01-05T10:00:00-05:00",
        }

    def searchset(*resources: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(resources),
            "entry": [
                {
                    "fullUrl": f"https://ehr.example.org/fhir/{r['resourceType']}/{r['id']}",
                    "resource": r,
                }
                for r in resources
            ],
        }

    earlier = encounter("89001", "2023-01-05T09:00:00-05:00", "finished")
    current = encounter("89284", "2024-03-02T08:00:00-05:00", "in-progress")
    past_condition = condition("c-1", "89001", "38341003", "401.9", "Hypertension")
    conditions = [
        condition("c-2", "89284", "42343007", "428.0", "Congestive heart failure"),
        condition("c-3", "89284", "44054006", "250.00", "Diabetes mellitus type 2"),
    ]
    procedure = {
        "resourceType": "Procedure",
        "id": "p-1",
        "status": "completed",
        "code": concept(
            (snomed, "392230005", "Venous catheterization"), (icd9, "38.93", "Venous cath")
        ),
        "subject": ref("Patient", "1288992"),
        "encounter": ref("Encounter", "89284"),
        "performedPeriod": {"start": "2024-03-02T09:00:00-05:00"},
    }
    prescription = {
        "resourceType": "MedicationRequest",
        "id": "mr-1",
        "status": "stopped",
        "intent": "order",
        "medicationCodeableConcept": concept(
            (rxnorm, "314076", "lisinopril 10 MG Oral Tablet"),
            (ATC_SYSTEM, "C07AB02", "metoprolol"),
        ),
        "subject": ref("Patient", "1288992"),
        "encounter": ref("Encounter", "89001"),
        "authoredOn": "2023-01-05T10:00:00-05:00",
    }
    patient = {
        "resourceType": "Patient",
        "id": "1288992",
        "extension": [
            {
                "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                "extension": [
                    {
                        "url": "ombCategory",
                        "valueCoding": {
                            "system": "urn:oid:2.16.840.1.113883.6.238",
                            "code": "2106-3",
                            "display": "White",
                        },
                    },
                    {"url": "text", "valueString": "White"},
                ],
            }
        ],
        "name": [{"use": "official", "family": "Watts", "given": ["Wade"]}],
        "gender": "female",
        "birthDate": "1950-12-25",
    }
    return {
        "patient": patient,
        "encounter": current,
        "encounters": searchset(earlier, current),
        "conditions": searchset(*conditions),
        "procedures": searchset(procedure),
        "pastConditions": searchset(past_condition, *conditions),
        "pastProcedures": searchset(procedure),
        "medications": searchset(prescription),
    }


def order_select(prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "hookInstance": "e9f3c6d4-4e6a-4a49-9c3c-1f0f5b1c2a77",
        "hook": "order-select",
        "fhirServer": "https://ehr.example.org/fhir",
        "context": copy.deepcopy(SPEC_ORDER_SELECT_CONTEXT),
        "prefetch": synthea_prefetch() if prefetch is None else prefetch,
    }


def patient_view(prefetch: dict[str, Any] | None = None) -> dict[str, Any]:
    request = copy.deepcopy(SPEC_PATIENT_VIEW)
    request["prefetch"] = synthea_prefetch() if prefetch is None else prefetch
    return request


@pytest.fixture()
def eager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Every drug recommended (threshold 0): all suggestions and both DDI pairs show."""
    app = create_app(run_dir=real_coded_eager(tmp_path_factory), config=ServeConfig(token=TOKEN))
    with TestClient(app) as client:
        yield client


def call(client: TestClient, path: str, body: Any) -> httpx.Response:
    return client.post(path, json=body, headers=AUTH)


def assert_valid_cards(answer: dict[str, Any]) -> None:
    """What the specification requires of every card."""
    for card in answer["cards"]:
        assert card["summary"] and len(card["summary"]) <= SUMMARY_LIMIT < 140
        assert card["indicator"] in ("info", "warning", "critical")
        assert card["source"]["label"] == SOURCE_LABEL and "not medical advice" in SOURCE_LABEL
        assert {"system", "code"} <= set(card["source"]["topic"])
        if "suggestions" in card:
            assert card["selectionBehavior"] in ("at-most-one", "any")
            for suggestion in card["suggestions"]:
                assert suggestion["label"] and suggestion["uuid"]
                for action in suggestion["actions"]:
                    assert (
                        action["type"] in ("create", "update", "delete") and action["description"]
                    )
        for value in card.values():  # no null or empty values (the specification)
            assert value not in (None, "", [], {})


# ------------------------------------------------------------------------------ discovery
def test_discovery_lists_both_hooks_with_prefetch_templates(eager: TestClient) -> None:
    reply = eager.get("/cds-services", headers=AUTH)
    assert reply.status_code == 200 and reply.headers["content-type"] == "application/json"
    services = {s["hook"]: s for s in reply.json()["services"]}
    assert set(services) == {"order-select", "patient-view"}
    for service in services.values():
        assert {"hook", "title", "description", "id", "prefetch"} <= set(service)
        assert "never fetches" in service["description"]
        prefetch = service["prefetch"]
        assert prefetch["patient"] == "Patient/{{context.patientId}}"
        assert prefetch["conditions"] == (
            "Condition?patient={{context.patientId}}&encounter={{context.encounterId}}"
        )
        assert prefetch["procedures"].startswith("Procedure?patient={{context.patientId}}&enc")
        assert prefetch["medications"] == "MedicationRequest?patient={{context.patientId}}"
        assert prefetch["encounters"] == "Encounter?patient={{context.patientId}}"
        assert prefetch == PREFETCH
    assert services["order-select"]["id"] == ORDER_SELECT.rsplit("/", 1)[1]
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert "x-frame-options" not in reply.headers  # API headers, as /v1/*


def test_the_openapi_document_describes_each_service(eager: TestClient) -> None:
    """Each service has its own request schema, which the valid calls here satisfy."""
    import jsonschema

    paths = eager.get("/openapi.json").json()["paths"]
    assert "/cds-services/{service_id}" not in paths  # other ids: 404, not a documented path
    calls = [
        (ORDER_SELECT, order_select()),
        (ORDER_SELECT, json.loads(EXAMPLE.read_text())),
        (PATIENT_VIEW, patient_view()),
    ]
    for path, request in calls:
        operation = paths[path]["post"]
        assert {"200", "401", "412", "413", "415", "422"} <= set(operation["responses"])
        schema = operation["requestBody"]["content"]["application/json"]["schema"]
        jsonschema.Draft202012Validator.check_schema(schema)
        jsonschema.validate(request, schema)
        wrong_hook = {**request, "hook": "order-sign"}
        assert not jsonschema.Draft202012Validator(schema).is_valid(wrong_hook)
        answer = call(eager, path, request).json()
        response = operation["responses"]["200"]["content"]["application/json"]["schema"]
        jsonschema.validate(answer, response)


def test_token_guards_discovery_and_services(eager: TestClient) -> None:
    for reply in (
        eager.get("/cds-services"),
        eager.post(ORDER_SELECT, json=order_select()),
        eager.post(ORDER_SELECT, json=order_select(), headers={"Authorization": "Bearer wrong"}),
    ):
        assert reply.status_code == 401 and reply.headers["www-authenticate"]
        assert_error_shape(reply)


# ------------------------------------------------------------------------------ order-select
def test_order_select_suggests_drug_classes_not_already_drafted(eager: TestClient) -> None:
    answer = call(eager, ORDER_SELECT, order_select()).json()
    assert_valid_cards(answer)
    info = [c for c in answer["cards"] if c["indicator"] == "info"]
    assert len(info) == 1
    card = info[0]
    suggested = [
        a["resource"]["medicationCodeableConcept"]["coding"][0]["code"]
        for s in card["suggestions"]
        for a in s["actions"]
    ]
    # threshold 0: every class is recommended; the drafted beta blocker is not suggested again
    assert sorted(suggested) == ["A10A", "B01A", "C03C", "N02B"]
    assert card["selectionBehavior"] == "any"
    assert all(s["isRecommended"] for s in card["suggestions"])
    assert "C07A" in card["detail"] and "in the draft orders" in card["detail"]
    assert "not medical advice" in card["detail"].lower()
    # The amoxicillin order (RxNorm only, no drug map in the service) is said to be unchecked.
    assert any("1 draft MedicationRequest" in n for n in answer["extension"]["leader.notes"])


def test_ddi_warning_cards_name_both_drugs(eager: TestClient) -> None:
    answer = call(eager, ORDER_SELECT, order_select()).json()
    warnings = [c for c in answer["cards"] if c["indicator"] == "warning"]
    named = {
        tuple(sorted(code for code in ("C07A", "C03C", "A10A", "N02B") if code in c["summary"]))
        for c in warnings
    }
    assert named == {("C03C", "C07A"), ("A10A", "N02B")}
    drafted = next(c for c in warnings if "C07A" in c["summary"])
    assert "in the draft orders" in drafted["detail"] and "suggested here" in drafted["detail"]
    assert "beta blocking agents" in drafted["summary"] and "diuretics" in drafted["summary"]
    assert drafted["source"]["topic"]["code"] == "drug-interaction"


def test_suggested_medication_requests_validate_as_fhir_r4(eager: TestClient) -> None:
    from fhir.resources.R4B.medicationrequest import MedicationRequest

    answer = call(eager, ORDER_SELECT, order_select()).json()
    resources = [
        action["resource"]
        for card in answer["cards"]
        for suggestion in card.get("suggestions", [])
        for action in suggestion["actions"]
    ]
    assert len(resources) == 4
    for resource in resources:
        parsed = MedicationRequest.model_validate(resource)  # raises on an invalid resource
        assert parsed.status == "draft" and parsed.intent == "proposal"
        assert parsed.subject.reference == PATIENT
        assert parsed.encounter.reference == "Encounter/89284"
        coding = parsed.medicationCodeableConcept.coding[0]
        assert coding.system == ATC_SYSTEM and coding.display
    insulin = next(
        r for r in resources if r["medicationCodeableConcept"]["coding"][0]["code"] == "A10A"
    )
    assert insulin["medicationCodeableConcept"]["coding"][0]["display"] == "insulins"


def test_the_synthea_prefetch_becomes_the_patient_document(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from leader.cds_hooks import (
        HookContext,
        HookRequest,
        fhir_options,
        prefetch_document,
        prefetch_resources,
    )
    from leader.recommend import Recommender, load_model

    recommender = Recommender(load_model(real_coded_eager(tmp_path_factory)))
    request = HookRequest("patient-view", "x", HookContext("1288992", "89284"), synthea_prefetch())
    resources, notes = prefetch_resources(request)
    assert notes == [] and len(resources) == 8  # the repeated ones once
    document, notes = prefetch_document(resources, "89284", fhir_options(recommender))
    assert notes == [] and document is not None
    assert document["profile"] == {"gender": "F", "race": "White", "age_band": "70-79"}
    visits = [
        {k: v[k] for k in ("id", "diagnoses", "procedures", "medications")}
        for v in document["visits"]
    ]
    assert visits == [
        {"id": "89001", "diagnoses": ["4019"], "procedures": [], "medications": ["C07A"]},
        {"id": "89284", "diagnoses": ["4280", "25000"], "procedures": ["3893"], "medications": []},
    ]


def test_the_same_answer_as_v1_recommend_on_the_converted_patient(eager: TestClient) -> None:
    """The cards' probabilities are /v1/recommend's for the patient the prefetch describes."""
    patient = {
        "id": "1288992",
        "profile": {"gender": "F", "race": "White", "age_band": "70-79"},
        "visits": [
            {"diagnoses": ["4019"], "procedures": [], "medications": ["C07A"]},
            {"diagnoses": ["4280", "25000"], "procedures": ["3893"]},
        ],
    }
    expected = eager.post("/v1/recommend?top=0", json=patient, headers=AUTH).json()
    answer = call(eager, PATIENT_VIEW, patient_view()).json()
    assert_valid_cards(answer)
    detail = next(c for c in answer["cards"] if c["indicator"] == "info")["detail"]
    rows = [line for line in detail.splitlines() if line.startswith("| ")][1:]  # no header
    assert len(rows) == len(expected["recommended"]) == 5
    for row, drug in zip(rows, expected["recommended"], strict=True):  # same order too
        assert drug["code"] in row and f"| {drug['probability']:.2f} |" in row
    # without the earlier encounter, the history changes and so may the probabilities
    prefetch = synthea_prefetch()
    prefetch["encounters"] = None
    alone = call(eager, PATIENT_VIEW, patient_view(prefetch)).json()
    one_visit = {**patient, "visits": patient["visits"][1:]}
    expected_alone = eager.post("/v1/recommend?top=0", json=one_visit, headers=AUTH).json()
    probabilities = sorted(d["probability"] for d in expected_alone["recommended"])
    shown = next(c for c in alone["cards"] if c["indicator"] == "info")["detail"]
    assert all(f"| {p:.2f} |" in shown for p in probabilities)


def test_explanations_reach_the_card(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook for explanations (issue 21): when ``leader.explain`` is installed, the card's
    drugs are explained (and only they), and each row says why. A stand-in module here, with
    the interface and answer shape of that issue's ``add_explanations``."""
    import importlib.machinery
    import types

    calls: list[list[str]] = []

    def add_explanations(recommender: Any, prepared: Any, results: Any, top_items: int) -> None:
        assert len(prepared) == len(results) == 1 and top_items == 3
        drugs = [d["code"] for d in [*results[0]["recommended"], *results[0]["ranked"]]]
        calls.append(drugs)
        because = [
            {"kind": "diagnosis", "code": "4280", "name": "Heart failure", "contribution": 0.21},
            {"kind": "profile", "code": "gender", "name": "gender: F", "contribution": -0.05},
        ]
        results[0]["explanations"] = [
            {"drug": code, "name": code, "probability": 0.5, "method": "integrated gradients",
             "unit": "logit", "because": because}
            for code in drugs
        ]  # fmt: skip

    fake = types.ModuleType("leader.explain")
    fake.__spec__ = importlib.machinery.ModuleSpec("leader.explain", None)
    fake.EXPLAIN_WORK = 250_000  # type: ignore[attr-defined]
    fake.add_explanations = add_explanations  # type: ignore[attr-defined]
    fake.explain_work = lambda samples: 10  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "leader.explain", fake)
    app = create_app(run_dir=real_coded_eager(tmp_path_factory))
    with TestClient(app, base_url="http://localhost") as client:
        answer = client.post(PATIENT_VIEW, json=patient_view()).json()
    card = next(c for c in answer["cards"] if c["indicator"] == "info")
    assert len(calls) == 1 and sorted(calls[0]) == sorted(REAL_CODES[f"m{i}"] for i in range(1, 6))
    rows = [line for line in card["detail"].splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 5
    assert all(row.endswith("| 4280 Heart failure +0.210, gender: F -0.050 |") for row in rows)
    assert "integrated gradients, logit" in card["detail"]
    assert explanation_markdown({"because": "not a list"}) is None


def test_drugs_ordered_in_this_encounter_are_not_suggested_again(eager: TestClient) -> None:
    prefetch = synthea_prefetch()
    current = copy.deepcopy(prefetch["medications"]["entry"][0]["resource"])
    current.update(id="mr-2", status="active", encounter={"reference": "Encounter/89284"})
    current["medicationCodeableConcept"]["coding"][1]["code"] = "C03CA01"  # furosemide
    prefetch["medications"]["entry"].append({"resource": current})
    answer = call(eager, PATIENT_VIEW, patient_view(prefetch)).json()
    card = next(c for c in answer["cards"] if c["indicator"] == "info")
    codes = {
        a["resource"]["medicationCodeableConcept"]["coding"][0]["code"]
        for s in card["suggestions"]
        for a in s["actions"]
    }
    assert codes == {"A10A", "B01A", "C07A", "N02B"}
    assert "ordered in this encounter" in card["detail"]


def test_rxnorm_drafts_match_through_the_services_drug_map(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """With a drug map (serve's FHIR settings), an RxNorm-only draft finds its class."""
    from leader.cds_hooks import HookContext, build_cards, fhir_options
    from leader.fhir import FhirInput
    from leader.recommend import Recommender, load_model

    recommender = Recommender(load_model(real_coded_eager(tmp_path_factory)))
    result = recommender.recommend([{"visits": [{"diagnoses": ["4280"]}]}], top=0)[0]
    draft = {
        "resourceType": "MedicationRequest",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "866924"}]
        },
    }
    context = HookContext("1288992", "89284", draft_orders=[draft])

    class Service:  # what CdsHooks reads of RecommendService
        fhir = FhirInput(recommender.known, {"866924": "C07AB"})

    for options, drafted in (
        (fhir_options(recommender, Service()), {"C07A"}),
        (fhir_options(recommender), set()),  # no map: counted as unchecked
    ):
        answer = build_cards(result, context, recommender, options=options)
        card = answer["cards"][0]
        codes = {a["resource"]["medicationCodeableConcept"]["coding"][0]["code"]
                 for s in card["suggestions"] for a in s["actions"]}  # fmt: skip
        assert codes == {"A10A", "B01A", "C03C", "C07A", "N02B"} - drafted
        unchecked = any("1 draft" in n for n in answer.get("extension", {}).get("leader.notes", []))
        assert unchecked == (not drafted)  # unchecked exactly when the map is missing


def test_nothing_over_the_threshold_still_warns_about_drafted_pairs(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    guard = create_app(run_dir=real_coded_run(tmp_path_factory))
    guard.service.recommender.threshold = 1.01  # nothing can be recommended
    with TestClient(guard, base_url="http://localhost") as client:
        answer = client.post(ORDER_SELECT, json=order_select()).json()
        assert answer["cards"] == [] and "threshold" in answer["extension"]["leader.reason"]
        request = order_select()
        furosemide = copy.deepcopy(request["context"]["draftOrders"]["entry"][2])
        furosemide["resource"]["id"] = "draft-furosemide"
        furosemide["resource"]["medicationCodeableConcept"]["coding"][0]["code"] = "C03CA01"
        request["context"]["draftOrders"]["entry"].append(furosemide)
        answer = client.post(ORDER_SELECT, json=request).json()
    assert [c["indicator"] for c in answer["cards"]] == ["warning"]
    assert answer["cards"][0]["summary"].startswith("Interaction C07A + C03C")
    assert answer["cards"][0]["detail"].count("in the draft orders") == 2


# ------------------------------------------------------------------------------ patient-view
def test_the_specifications_patient_view_example_is_412(eager: TestClient) -> None:
    """Verbatim, it prefetches only a Patient under a key this service does not ask for:
    the service cannot fetch the rest, so it answers 412 as the specification says."""
    reply = call(eager, PATIENT_VIEW, SPEC_PATIENT_VIEW)
    assert reply.status_code == 412
    assert_error_shape(reply)
    detail = reply.json()["detail"][0]
    assert detail["path"] == "$.prefetch.encounter" and "never fetches" in detail["message"]
    assert "some-opaque-fhir-access-token" not in reply.text


@pytest.mark.parametrize("references", ["relative", "urn:uuid"])
def test_patient_view_with_the_prefetch_answers_cards(eager: TestClient, references: str) -> None:
    request = patient_view()
    if references == "urn:uuid":  # as Synthea's own Bundles reference (fullUrl urn:uuid:...)
        text = json.dumps(request["prefetch"])
        for kind in ("Patient", "Encounter"):
            text = text.replace(f'"reference": "{kind}/', '"reference": "urn:uuid:')
        request["prefetch"] = json.loads(text)
        assert "urn:uuid:1288992" in text and '"Patient/' not in text
    answer = call(eager, PATIENT_VIEW, request).json()
    assert_valid_cards(answer)
    card = next(c for c in answer["cards"] if c["indicator"] == "info")
    assert len(card["suggestions"]) == 5  # nothing drafted in patient-view
    assert len([c for c in answer["cards"] if c["indicator"] == "warning"]) == 2
    # the earlier visit (hypertension, a beta blocker) and the profile were read
    assert "leader.notes" not in answer.get("extension", {}), answer.get("extension")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: r["context"].pop("encounterId"), "no encounterId"),
        (
            lambda r: r["prefetch"].update(
                conditions=None, procedures=None, pastConditions=None, pastProcedures=None
            ),
            "no diagnosis",
        ),
        (
            lambda r: r["prefetch"].update(
                encounter={**r["prefetch"]["encounter"], "id": "89285"}, encounters=None
            ),
            "'89284' not found",
        ),
    ],
)
def test_missing_data_is_no_cards_with_the_reason(
    eager: TestClient, change: Any, reason: str
) -> None:
    request = patient_view()
    change(request)
    reply = call(eager, PATIENT_VIEW, request)
    assert reply.status_code == 200
    assert reply.json()["cards"] == [] and reason in reply.json()["extension"]["leader.reason"]


def test_an_encounter_not_started_yet_is_the_current_visit(eager: TestClient) -> None:
    request = patient_view()
    for encounter in (
        request["prefetch"]["encounter"],
        request["prefetch"]["encounters"]["entry"][1]["resource"],
    ):
        encounter.pop("period", None)  # planned or just opened: no period.start yet
    answer = call(eager, PATIENT_VIEW, request).json()
    assert [c["indicator"] for c in answer["cards"]] == ["info", "warning", "warning"]


def test_optional_prefetch_missing_is_said(eager: TestClient) -> None:
    prefetch = synthea_prefetch()
    for key in ("patient", "encounters", "pastConditions", "pastProcedures", "medications"):
        del prefetch[key]
    answer = call(eager, PATIENT_VIEW, patient_view(prefetch)).json()
    notes = answer["extension"]["leader.notes"]
    assert any("earlier MedicationRequests" in n for n in notes)
    assert any("gender and age band unknown" in n for n in notes)
    assert answer["cards"] and "earlier visits not used" in answer["cards"][0]["detail"]


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize(
    ("body", "status", "path"),
    [
        (b'{"hook": "order-select", ', 422, "$"),
        (b"[1, 2]", 422, "$"),
        (json.dumps({**order_select(), "hook": "patient-view"}).encode(), 422, "$.hook"),
        (
            json.dumps({k: v for k, v in order_select().items() if k != "hookInstance"}).encode(),
            422,
            "$.hookInstance",
        ),
        (
            json.dumps({**order_select(), "context": {"patientId": "1"}}).encode(),
            422,
            "$.context.selections",
        ),
        (
            json.dumps(
                {**order_select(), "prefetch": {**synthea_prefetch(), "patient": [1]}}
            ).encode(),
            422,
            "$.prefetch.patient",
        ),
        (json.dumps({**order_select(), "prefetch": {}}).encode(), 412, "$.prefetch.encounter"),
    ],
)
def test_bad_requests_have_the_one_error_shape(
    eager: TestClient, body: bytes, status: int, path: str
) -> None:
    reply = eager.post(ORDER_SELECT, content=body, headers={**AUTH, **JSON_TYPE})
    assert reply.status_code == status, reply.text
    assert_error_shape(reply)
    assert reply.json()["detail"][0]["path"] == path


def test_another_patients_resources_are_refused(eager: TestClient) -> None:
    prefetch = synthea_prefetch()
    prefetch["conditions"]["entry"][1]["resource"]["subject"] = {"reference": "Patient/other"}
    reply = call(eager, ORDER_SELECT, order_select(prefetch))
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["path"] == "$.prefetch.conditions.entry[1].resource.subject"
    request = order_select()
    request["context"]["draftOrders"]["entry"][0]["resource"]["patient"]["reference"] = "Patient/2"
    reply = call(eager, ORDER_SELECT, request)
    assert reply.status_code == 422
    assert reply.json()["detail"][0]["path"] == "$.context.draftOrders.entry[0].resource.patient"


def test_unknown_service_method_and_content_type(eager: TestClient) -> None:
    unknown = call(eager, "/cds-services/no-such-service", order_select())
    assert unknown.status_code == 404 and "leader-order-select" in unknown.text
    assert_error_shape(unknown)
    wrong_method = eager.get(ORDER_SELECT, headers=AUTH)
    assert wrong_method.status_code == 405
    assert_error_shape(wrong_method)
    text = eager.post(ORDER_SELECT, content=b"{}", headers={**AUTH, "Content-Type": "text/plain"})
    assert text.status_code == 415
    assert_error_shape(text)


def test_limits_apply(tmp_path_factory: pytest.TempPathFactory) -> None:
    run = real_coded_eager(tmp_path_factory)
    small = create_app(run_dir=run, config=ServeConfig(max_body=2_000, max_codes=2))
    with TestClient(small, base_url="http://localhost") as client:
        too_big = client.post(ORDER_SELECT, json=order_select())
        assert too_big.status_code == 413
        assert_error_shape(too_big)
    few_codes = create_app(run_dir=run, config=ServeConfig(max_codes=2))
    with TestClient(few_codes, base_url="http://localhost") as client:
        reply = client.post(ORDER_SELECT, json=order_select())
        assert reply.status_code == 413 and reply.json()["detail"][0]["path"] == "$.prefetch"


def test_malformed_fhir_never_gets_a_500(eager: TestClient) -> None:
    """Wrong types wherever the converter reads: a 4xx or an answer, never a 500."""
    oddities: list[Any] = [None, 1, "x", [], {}, [{}], {"coding": 3}, {"reference": 5}]
    paths = [
        ("encounter", "period"),
        ("encounter", "status"),
        ("encounter", "id"),
        ("patient", "birthDate"),
        ("patient", "extension"),
        ("patient", "gender"),
    ]
    for key, name in paths:
        for odd in oddities:
            prefetch = synthea_prefetch()
            prefetch[key][name] = odd
            reply = call(eager, PATIENT_VIEW, patient_view(prefetch))
            assert reply.status_code < 500, (key, name, odd, reply.text)
    for name in ("code", "encounter", "subject", "verificationStatus", "clinicalStatus"):
        for odd in oddities:
            prefetch = synthea_prefetch()
            prefetch["conditions"]["entry"][0]["resource"][name] = odd
            reply = call(eager, PATIENT_VIEW, patient_view(prefetch))
            assert reply.status_code < 500, (name, odd, reply.text)
    for odd in oddities:
        request = order_select()
        request["context"]["draftOrders"]["entry"][2]["resource"]["medicationCodeableConcept"] = odd
        assert call(eager, ORDER_SELECT, request).status_code < 500, odd


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = st.sampled_from(
    [
        "id",
        "subject",
        "encounter",
        "code",
        "period",
        "status",
        "entry",
        "resourceType",
        "medicationCodeableConcept",
        "verificationStatus",
        "extension",
        "birthDate",
        "gender",
    ]
)


def test_fuzzed_resources_never_get_a_500(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Any JSON value at any field the service or the converter reads: 200 or 4xx."""
    app = create_app(run_dir=real_coded_eager(tmp_path_factory))
    keys = sorted(synthea_prefetch())
    with TestClient(app, base_url="http://localhost") as client:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.sampled_from(keys), st.integers(0, 3), FIELDS, JSON, st.booleans())
        def check(key: str, entry: int, name: str, value: Any, in_draft: bool) -> None:
            request = order_select()
            target = request["prefetch"][key]
            if in_draft:
                target = request["context"]["draftOrders"]
            if "entry" in target and name != "entry":
                target = target["entry"][entry % len(target["entry"])]["resource"]
            target[name] = value
            reply = client.post(ORDER_SELECT, json=request)
            assert reply.status_code in (200, 412, 413, 422), (key, name, value, reply.text)
            if reply.status_code != 200:
                assert_error_shape(reply)

        check()


# ------------------------------------------------------------------------------ real server
def test_real_server_answers_the_readme_example(tmp_path_factory: pytest.TempPathFactory) -> None:
    """`leader serve` as a user runs it, called as the README's curl example does."""
    run = real_coded_eager(tmp_path_factory)
    port = _free_port()
    env = {**os.environ, "LEADER_TOKEN": TOKEN}
    command = [sys.executable, "-m", "leader", "serve", "--run", str(run), "--port", str(port)]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/v1/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None and time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)
        services = httpx.get(f"{base}/cds-services", headers=AUTH).json()["services"]
        assert [s["id"] for s in services] == ["leader-order-select", "leader-patient-view"]
        body = EXAMPLE.read_bytes()
        reply = httpx.post(f"{base}{ORDER_SELECT}", content=body, headers={**AUTH, **JSON_TYPE})
        assert reply.status_code == 200, reply.text
        answer = reply.json()
        assert_valid_cards(answer)
        card = answer["cards"][0]
        codes = {
            a["resource"]["medicationCodeableConcept"]["coding"][0]["code"]
            for s in card["suggestions"]
            for a in s["actions"]
        }
        assert "C07A" not in codes and codes  # the drafted metoprolol's class
        unauthorised = httpx.post(f"{base}{ORDER_SELECT}", content=body, headers=JSON_TYPE)
        assert unauthorised.status_code == 401
    finally:
        server.terminate()
        _, stderr = server.communicate(timeout=20)
    logged = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert {"method": "POST", "path": ORDER_SELECT, "status": 401}.items() <= logged[-1].items()
