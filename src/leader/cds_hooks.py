"""CDS Hooks 2.0 in ``leader serve``: the recommender called from an EHR's workflow.

CDS Hooks (HL7, https://cds-hooks.hl7.org/2.0/) lets an EHR call decision support at
points of its workflow ("hooks") and show the answer as cards. This module adds:

- ``GET /cds-services``: discovery, one service per hook (``order-select`` when a
  clinician picks orders, ``patient-view`` when a chart is opened), each with the prefetch
  templates the service needs (:data:`PREFETCH`);
- ``POST /cds-services/{id}``: the prefetched FHIR R4 resources become the patient
  document ``/v1/recommend`` takes (:mod:`leader.fhir`), the student recommends for the
  context's encounter, and the answer is cards: one ``info`` card listing the recommended
  drug classes (probability, the explanation when the result carries one) whose
  suggestions create draft ``MedicationRequest`` proposals coded in ATC, and one
  ``warning`` card per interacting pair among the suggested and already ordered drugs.

The service never fetches from the client's ``fhirServer`` (it works offline): a request
without the prefetched encounter and its conditions is answered 412 (Precondition Failed),
as the specification says for a service that cannot obtain its data. Prefetch keys that
are present but ``null`` mean "no such data", and an encounter with nothing the model knows
is answered with no cards and the reason in the response's ``extension``
(``leader.reason``; ``leader.notes`` lists what was missing or not used).

Explanations (issue 21): when this install has :mod:`leader.explain`, the recommended
drugs are explained (:func:`explain_result`) and each row of the card says why, the three
strongest inputs signed (:func:`explanation_markdown`); without it the column is empty.

Security is the service's (:class:`leader.serve.Guard`): the bearer token when one is
configured, body limits, JSON only, and every 4xx in the one error shape
``{"detail": [{"path", "message"}]}``.

>>> result = recommender.recommend([document], top=0)[0]                       # doctest: +SKIP
>>> build_cards(result, HookContext("1288992", "89284"), recommender)["cards"]  # doctest: +SKIP
"""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from leader.recommend import BadJSON, InvalidInput, count_items, loads

if TYPE_CHECKING:
    from leader.fhir import DocumentOptions
    from leader.recommend import Prepared, Recommender
    from leader.serve import RecommendService

ATC_SYSTEM = "http://www.whocc.no/atc"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TOPIC_SYSTEM = "https://leader.invalid/cds-hooks/topic"  # no registered system: our own
PAPER_URL = "https://arxiv.org/abs/2402.02803"
SOURCE_LABEL = "LEADER medication recommender (research tool, not medical advice)"
INLINE_BODY = 4096  # bodies up to this size are worked on the event loop (as serve's)
SUMMARY_LIMIT = 139  # the specification: a summary under 140 characters
MAX_LISTED = 20  # drug classes in one card's detail table
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR R4 id datatype

# Prefetch templates (discovery). The service reads these keys and nothing else.
PREFETCH: dict[str, str] = {
    "patient": "Patient/{{context.patientId}}",
    "encounter": "Encounter/{{context.encounterId}}",
    "encounters": "Encounter?patient={{context.patientId}}",
    "conditions": "Condition?patient={{context.patientId}}&encounter={{context.encounterId}}",
    "procedures": "Procedure?patient={{context.patientId}}&encounter={{context.encounterId}}",
    "pastConditions": "Condition?patient={{context.patientId}}",
    "pastProcedures": "Procedure?patient={{context.patientId}}",
    "medications": "MedicationRequest?patient={{context.patientId}}",
}
REQUIRED_PREFETCH = ("encounter", "conditions")  # the visit to recommend for
PREFETCH_NOTES = {
    "patient": "no Patient: gender and age band unknown",
    "encounters": "no earlier Encounters: earlier visits not used",
    "procedures": "no procedures of this encounter",
    "pastConditions": "no earlier conditions: earlier visits not used",
    "pastProcedures": "no earlier procedures",
    "medications": "no earlier MedicationRequests: earlier drugs not used",
}
NEVER_FETCHES = (
    "This service never fetches from fhirServer (it works offline): it reads the prefetch "
    "only, and answers 412 without the encounter and its conditions."
)


@dataclass(frozen=True)
class Service:
    """One CDS Service of the discovery document."""

    id: str
    hook: str
    title: str
    description: str

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "title": self.title,
            "description": f"{self.description} {NEVER_FETCHES}",
            "id": self.id,
            "prefetch": dict(PREFETCH),
        }


SERVICES: dict[str, Service] = {
    s.id: s
    for s in (
        Service(
            "leader-order-select",
            "order-select",
            "LEADER medication classes while ordering",
            "Research tool, not medical advice. Drug classes (ATC level 3) the LEADER student "
            "recommends for the encounter's diagnoses and procedures, the patient's earlier "
            "visits and profile; drugs already in draftOrders are not suggested again, and "
            "interacting pairs among suggested and drafted drugs are warned about.",
        ),
        Service(
            "leader-patient-view",
            "patient-view",
            "LEADER medication classes for this encounter",
            "Research tool, not medical advice. Drug classes (ATC level 3) the LEADER student "
            "recommends for the encounter in context, with interaction warnings.",
        ),
    )
}


def discovery() -> dict[str, Any]:
    """The discovery document (``GET /cds-services``)."""
    return {"services": [s.discovery() for s in SERVICES.values()]}


# ----------------------------------------------------------------------------- request
class HookProblem(Exception):
    """A request the service cannot answer: HTTP status, JSON path, message."""

    def __init__(self, status: int, path: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.path = path
        self.message = message


@dataclass
class HookContext:
    """What the service uses of a hook call's context."""

    patient_id: str
    encounter_id: str | None = None
    user_id: str | None = None
    draft_orders: list[dict[str, Any]] = field(default_factory=list)  # MedicationRequests
    selections: list[str] = field(default_factory=list)


@dataclass
class HookRequest:
    """A validated hook call: its context and prefetch (key -> resource, or None for null)."""

    hook: str
    hook_instance: str
    context: HookContext
    prefetch: dict[str, dict[str, Any] | None]


def parse_request(body: bytes, service: Service) -> HookRequest:
    """The validated request, or :class:`HookProblem` (422) naming the JSON path."""
    try:
        document = loads(body)
    except BadJSON as exc:
        raise HookProblem(422, exc.path, exc.message) from None
    if not isinstance(document, dict):
        raise HookProblem(422, "$", "a CDS Hooks request is a JSON object")
    hook = _string(document, "hook", "$")
    if hook != service.hook:
        raise HookProblem(
            422, "$.hook", f"this service answers the {service.hook!r} hook; see GET /cds-services"
        )
    instance = _string(document, "hookInstance", "$")
    for name, kind in (("fhirServer", str), ("fhirAuthorization", dict), ("extension", dict)):
        if name in document and not isinstance(document[name], kind):
            what = "a string" if kind is str else "an object"
            raise HookProblem(422, f"$.{name}", f"must be {what}")
    raw_context = document.get("context")
    if not isinstance(raw_context, dict):
        raise HookProblem(422, "$.context", "required: an object (the hook's context)")
    context = _context(raw_context, service.hook)
    prefetch = document.get("prefetch", {})
    if not isinstance(prefetch, dict):
        raise HookProblem(422, "$.prefetch", "must be an object of prefetch key -> resource")
    kept: dict[str, dict[str, Any] | None] = {}
    for key in PREFETCH:  # keys the service did not ask for are ignored, never read
        if key not in prefetch:
            continue
        value = prefetch[key]
        if value is not None and not (isinstance(value, dict) and _typed(value)):
            raise HookProblem(
                422, f"$.prefetch.{key}", "must be a FHIR resource (with resourceType) or null"
            )
        kept[key] = value
    return HookRequest(hook, instance, context, kept)


def _typed(resource: dict[str, Any]) -> bool:
    """Whether a JSON object names its FHIR resource type."""
    kind = resource.get("resourceType")
    return isinstance(kind, str) and bool(kind)


def _string(document: dict[str, Any], name: str, where: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise HookProblem(422, f"{where}.{name}", "required: a non-empty string")
    return value


def _fhir_id(document: dict[str, Any], name: str, required: bool) -> str | None:
    if name not in document and not required:
        return None
    value = _string(document, name, "$.context")
    if not FHIR_ID.fullmatch(value):
        raise HookProblem(
            422, f"$.context.{name}", "not a FHIR id (1-64 of A-Z, a-z, 0-9, '-', '.')"
        )
    return value


def _context(raw: dict[str, Any], hook: str) -> HookContext:
    patient_id = _fhir_id(raw, "patientId", required=True)
    assert patient_id is not None
    encounter_id = _fhir_id(raw, "encounterId", required=False)
    user_id = raw.get("userId")
    if "userId" in raw and not isinstance(user_id, str):  # JSON null is not allowed either
        raise HookProblem(422, "$.context.userId", "must be a string")
    context = HookContext(patient_id, encounter_id, user_id)
    if hook != "order-select":
        return context
    selections = raw.get("selections")
    if not isinstance(selections, list) or not all(isinstance(s, str) for s in selections):
        raise HookProblem(422, "$.context.selections", "required: an array of resource ids")
    draft = raw.get("draftOrders")
    if not isinstance(draft, dict) or draft.get("resourceType") != "Bundle":
        raise HookProblem(422, "$.context.draftOrders", "required: a FHIR Bundle")
    context.selections = selections
    orders = bundle_resources(draft, "$.context.draftOrders")
    for i, order in enumerate(orders):
        _check_patient(order, patient_id, f"$.context.draftOrders.entry[{i}].resource")
    context.draft_orders = [r for r in orders if r["resourceType"] == "MedicationRequest"]
    return context


def bundle_resources(resource: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The resources of a Bundle's entries (or ``[resource]`` when it is no Bundle)."""
    if resource.get("resourceType") != "Bundle":
        return [resource]
    entries = resource.get("entry", [])
    if not isinstance(entries, list):
        raise HookProblem(422, f"{where}.entry", "must be an array of entries")
    out = []
    for i, entry in enumerate(entries):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if not (isinstance(inner, dict) and _typed(inner)):
            raise HookProblem(
                422, f"{where}.entry[{i}].resource", "must be a FHIR resource (with resourceType)"
            )
        out.append(inner)
    return out


def prefetch_resources(request: HookRequest) -> tuple[list[dict[str, Any]], list[str]]:
    """Every prefetched resource once (by type and id), and notes on the keys not given.

    A required key missing is a :class:`HookProblem` 412 (this service never fetches); a
    resource of another patient than the context's is a 422.
    """
    missing = [k for k in REQUIRED_PREFETCH if k not in request.prefetch]
    if missing:
        raise HookProblem(
            412, f"$.prefetch.{missing[0]}",
            f"prefetch {missing[0]!r} ({PREFETCH[missing[0]]}) missing. {NEVER_FETCHES}",
        )  # fmt: skip
    notes = [PREFETCH_NOTES[k] for k in PREFETCH_NOTES if k not in request.prefetch]
    seen: set[tuple[str, str]] = set()
    resources: list[dict[str, Any]] = []
    for key, value in request.prefetch.items():
        if value is None:
            continue
        where = f"$.prefetch.{key}"
        for i, resource in enumerate(bundle_resources(value, where)):
            at = f"{where}.entry[{i}].resource" if value is not resource else where
            _check_patient(resource, request.context.patient_id, at)
            rid = resource.get("id")
            if isinstance(rid, str):
                ident = (resource["resourceType"], rid)
                if ident in seen:  # the same Condition from "conditions" and "pastConditions"
                    continue
                seen.add(ident)
            resources.append(resource)
    return resources, notes


def _check_patient(resource: dict[str, Any], patient_id: str, where: str) -> None:
    """Refuse another patient's data: it must never shape this patient's cards."""
    from leader.fhir import reference_id

    if resource["resourceType"] == "Patient":
        found, at = resource.get("id"), f"{where}.id"
    else:
        field_name = "subject" if "subject" in resource else "patient"
        found, at = reference_id(resource.get(field_name)), f"{where}.{field_name}"
    if isinstance(found, str) and found != patient_id:  # unnamed or unreadable: not refused
        raise HookProblem(422, at, f"another patient than the context's patientId {patient_id!r}")


# ----------------------------------------------------------------------------- orders
def ordered_drugs(
    orders: Iterable[dict[str, Any]], options: DocumentOptions
) -> tuple[list[str], int]:
    """Model drug codes of MedicationRequests (in order, once), and how many matched none.

    Codings are chosen as the prefetch's are (:func:`leader.fhir.concept_code`): an ATC
    code in its class (``C07AB02`` -> ``C07A``), RxNorm through the drug map if any.
    """
    from leader.fhir import concept_code, medication_concept

    assert options.vocabulary is not None
    known = options.vocabulary["medication"]
    found: dict[str, None] = {}
    unmatched = 0
    for order in orders:
        concept, _ = medication_concept(order)
        code, _ = concept_code(concept, "medication", options)
        if code is None or code not in known:
            unmatched += 1
        else:
            found[code] = None
    return list(found), unmatched


# ----------------------------------------------------------------------------- cards
def medication_request(
    code: str, name: str, context: HookContext, system: str | None = ATC_SYSTEM
) -> dict[str, Any]:
    """A draft FHIR R4 MedicationRequest proposing one drug (class) for the patient."""
    coding = {"system": system, "code": code, "display": name}
    if system is None:  # a code of no known system (FHIR allows it; clients may not use it)
        del coding["system"]
    resource: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "status": "draft",
        "intent": "proposal",
        "medicationCodeableConcept": {"coding": [coding], "text": name},
        "subject": {"reference": f"Patient/{context.patient_id}"},
    }
    if context.encounter_id is not None:
        resource["encounter"] = {"reference": f"Encounter/{context.encounter_id}"}
    resource["note"] = [
        {"text": "Proposed by LEADER, a research tool, not medical advice: a drug class; "
                 "choose the product, dose and route."}
    ]  # fmt: skip
    return resource


def drug_system(options: DocumentOptions, code: str) -> str | None:
    """The code system of the model's drug codes: ATC for ATC3 classes, RxNorm for RxCUIs
    (a model trained with ``--drug-level rxnorm``), else none known."""
    if options.drug_level == "atc3":
        return ATC_SYSTEM
    return RXNORM_SYSTEM if code.isdigit() else None


def explanations_by_drug(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The result's ``explanations`` (issue 21, :func:`leader.explain.add_explanations`:
    per drug ``{"drug", "because": [{"kind", "code", "name", "contribution"}, ...],
    "method", "unit"}``) by drug code; empty when the result has none."""
    found = result.get("explanations")
    if not isinstance(found, list):
        return {}
    return {e["drug"]: e for e in found if isinstance(e, dict) and isinstance(e.get("drug"), str)}


def explanation_markdown(explanation: dict[str, Any] | None, limit: int = 3) -> str | None:
    """One drug's explanation as "code name +0.210, ..." (its ``limit`` strongest items)."""
    items = explanation.get("because") if isinstance(explanation, dict) else None
    if not isinstance(items, list):
        return None
    parts = []
    for item in items[:limit]:
        if not isinstance(item, dict):
            continue
        code, name = str(item.get("code") or ""), str(item.get("name") or "")
        coded = item.get("kind") in ("diagnosis", "procedure", "medication") and code != name
        label = f"{code} {name}".strip() if coded else name or code
        weight = item.get("contribution")
        sign = f" {weight:+.3f}" if isinstance(weight, int | float) else ""
        parts.append(f"{label}{sign}")
    return _cell(", ".join(parts)) if parts else None


def _cell(text: str) -> str:
    """Text safe in one Markdown table cell."""
    return text.replace("|", "/").replace("\n", " ")[:300]


def _summary(text: str) -> str:
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 1] + "\u2026"


def _named(drug: dict[str, Any]) -> str:
    """``name (code)``, or the code alone when the run has no name for it."""
    return drug["code"] if drug["name"] == drug["code"] else f"{drug['name']} ({drug['code']})"


def _listing(head: str, items: Sequence[str]) -> str:
    """``head`` and as many whole items as fit a summary, then "and N more"."""
    shown: list[str] = []
    for i, item in enumerate(items):
        rest = len(items) - i - 1
        tail = f" and {rest} more" if rest else ""
        if len(head) + len(", ".join([*shown, item])) + len(tail) > SUMMARY_LIMIT:
            break
        shown.append(item)
    left = len(items) - len(shown)
    if not shown:
        return _summary(head + items[0]) if items else head.rstrip(": ")
    return head + ", ".join(shown) + (f" and {left} more" if left else "")


def _source(topic: str, display: str) -> dict[str, Any]:
    return {
        "label": SOURCE_LABEL,
        "url": PAPER_URL,
        "topic": {"system": TOPIC_SYSTEM, "code": topic, "display": display},
    }


def build_cards(
    result: dict[str, Any],
    context: HookContext,
    recommender: Recommender,
    notes: Sequence[str] = (),
    ordered_here: Sequence[str] = (),
    options: DocumentOptions | None = None,
) -> dict[str, Any]:
    """The CDS Hooks response for one recommender result (:meth:`Recommender.format`).

    ``ordered_here``: model drug codes already requested in this encounter (from the
    prefetched MedicationRequests); with the draft orders, they are not suggested again.
    ``options``: how FHIR codings map to the model's codes (:func:`fhir_options`).
    """
    options = options or fhir_options(recommender)
    drafted, unmatched = ordered_drugs(context.draft_orders, options)
    role = {code: "ordered in this encounter" for code in ordered_here}
    role.update({code: "in the draft orders" for code in drafted})
    recommended = result["recommended"]
    suggested = [d for d in recommended if d["code"] not in role]
    notes = list(notes)
    if unmatched:
        notes.append(
            f"{unmatched} draft MedicationRequest(s) with no drug class the model knows: "
            "not checked for interactions"
        )
    if result.get("unknown_count"):
        notes.append(f"{result['unknown_count']} code(s) the model does not know were ignored")
    cards: list[dict[str, Any]] = []
    if recommended:
        explained = explanations_by_drug(result)
        card = _recommendation_card(
            recommended, suggested, role, context, notes, options, explained
        )
        cards.append(card)
    cards += _interaction_cards(suggested, role, recommender)
    response: dict[str, Any] = {"cards": cards}
    if not recommended:
        reason = "no drug class reaches the model's threshold for this encounter"
        response["extension"] = {"leader.reason": reason}
    if notes:
        response.setdefault("extension", {})["leader.notes"] = notes
    return response


def _recommendation_card(
    recommended: list[dict[str, Any]],
    suggested: list[dict[str, Any]],
    ordered: dict[str, str],
    context: HookContext,
    notes: Sequence[str],
    options: DocumentOptions,
    explained: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    count = len(recommended)
    summary = _listing(
        f"LEADER suggests {count} drug class{'es' if count > 1 else ''}: ",
        [f"{d['name']} ({d['probability']:.2f})" for d in recommended],
    )
    rows = ["| Drug class (ATC) | Probability | Because |", "|---|---|---|"]
    for drug in recommended[:MAX_LISTED]:
        because = explanation_markdown(explained.get(drug["code"])) or ""
        state = f" ({ordered[drug['code']]})" if drug["code"] in ordered else ""
        name = _cell(_named(drug))
        rows.append(f"| {name}{state} | {drug['probability']:.2f} | {because} |")
    if count > MAX_LISTED:
        rows.append(f"\n{count - MAX_LISTED} more not listed.")
    detail = "\n".join(rows) + (
        "\n\nResearch tool, not medical advice: drug classes (ATC level 3) a distilled LEADER "
        "model recommends from this encounter's diagnoses and procedures, the earlier visits "
        "and the profile. Choose products and doses yourself."
    )
    if explained:
        first = next(iter(explained.values()))
        how = ", ".join(str(first[k]) for k in ("method", "unit") if first.get(k))
        detail += f"\n\nBecause: the strongest inputs, signed (+ pushed the drug up; {how})."
    if notes:
        detail += "\n\nNotes: " + "; ".join(notes) + "."
    card: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "detail": detail,
        "indicator": "info",
        "source": _source("medication-recommendation", "Medication recommendation"),
    }
    if suggested:
        card["suggestions"] = [
            {
                "label": _summary(f"Propose {_named(d)}, p={d['probability']:.2f}"),
                "uuid": str(uuid.uuid4()),
                "isRecommended": True,
                "actions": [
                    {
                        "type": "create",
                        "description": f"Add a draft MedicationRequest for {_named(d)}.",
                        "resource": medication_request(
                            d["code"], d["name"], context, drug_system(options, d["code"])
                        ),
                    }
                ],
            }
            for d in suggested
        ]
        card["selectionBehavior"] = "any"
    return card


def _interaction_cards(
    suggested: list[dict[str, Any]], ordered: dict[str, str], recommender: Recommender
) -> list[dict[str, Any]]:
    """One warning per interacting pair among the suggested and the ordered drug classes."""
    index = {code: i for i, code in enumerate(recommender.drugs)}
    role = {d["code"]: "suggested here" for d in suggested}
    role.update(ordered)
    present = sorted(index[c] for c in role)
    cards = []
    for pos, a in enumerate(present):
        for b in present[pos + 1 :]:
            if not recommender.ddi[a, b]:
                continue
            first, second = recommender.drugs[a], recommender.drugs[b]
            name_a, name_b = recommender.drug_names[a], recommender.drug_names[b]
            cards.append(
                {
                    "uuid": str(uuid.uuid4()),
                    "summary": _summary(f"Interaction {first} + {second}: {name_a} with {name_b}"),
                    "detail": f"{_cell(name_a)} (ATC {first}, {role[first]}) and {_cell(name_b)} "
                    f"(ATC {second}, {role[second]}) are a known interacting pair "
                    f"(source: {recommender.model.ddi_source}). Research tool, not medical "
                    "advice.",
                    "indicator": "warning",
                    "source": _source("drug-interaction", "Drug-drug interaction"),
                }
            )
    return cards


def no_cards(reason: str, notes: Sequence[str] = ()) -> dict[str, Any]:
    """No decision support (the specification's empty cards), with the reason."""
    extension: dict[str, Any] = {"leader.reason": reason}
    if notes:
        extension["leader.notes"] = list(notes)
    return {"cards": [], "extension": extension}


def current_visit(document: dict[str, Any], encounter_id: str | None) -> dict[str, Any] | None:
    """The document cut at the context's encounter (its last visit), or None without one.

    Visits after the encounter (planned ones, say) are dropped: the model recommends for
    the last visit given.
    """
    visits = document.get("visits", [])
    ids = [str(v.get("id")) for v in visits]
    if encounter_id is None or encounter_id not in ids:
        return None
    last = len(ids) - 1 - ids[::-1].index(encounter_id)
    return {**document, "visits": visits[: last + 1]}


# ----------------------------------------------------------------------------- service
class CdsHooks:
    """``POST /cds-services/{id}``: raw body in, (status, JSON-ready answer) out."""

    def __init__(self, service: RecommendService) -> None:
        self.service = service
        self.recommender = service.recommender
        self.options = fhir_options(self.recommender, service)
        self.explains = find_spec("leader.explain") is not None  # issue 21's module

    async def handle(self, service_id: str, body: bytes) -> tuple[int, dict[str, Any]]:
        hook_service = SERVICES.get(service_id)
        if hook_service is None:
            known = ", ".join(SERVICES)
            return 404, _error("url", f"no CDS service {service_id[:40]!r}; services: {known}")
        try:
            if len(body) <= INLINE_BODY:
                ready = self._prepare(hook_service, body)
            else:  # parsing and converting a large prefetch: on the service's worker thread
                ready = await self.service._offload(self._prepare, hook_service, body)
            if isinstance(ready, dict):
                return 200, ready
            batcher = self.service.batcher
            if batcher is not None:
                prob = await batcher.predict([ready.prepared])
            else:
                prob = self.recommender.predict([ready.prepared])
            result = next(self.recommender.iter_results([ready.prepared], prob, False, 0))
            if self.explains:  # on the worker thread: ~40 ms of model calls for a student
                await self.service._offload(
                    explain_result, self.recommender, ready.prepared, result
                )
            answer = build_cards(
                result, ready.context, self.recommender, ready.notes, ready.ordered_here,
                self.options,
            )  # fmt: skip
            return 200, answer
        except HookProblem as exc:
            return exc.status, _error(exc.path, exc.message)

    def _prepare(self, hook_service: Service, body: bytes) -> _Ready | dict[str, Any]:
        request = parse_request(body, hook_service)
        context = request.context
        if context.encounter_id is None:
            return no_cards("no encounterId in the context: the service recommends for an "
                            "encounter's diagnoses and procedures")  # fmt: skip
        resources, notes = prefetch_resources(request)
        document, more = prefetch_document(resources, context.encounter_id, self.options)
        if document is None:
            return no_cards(more[0], notes)
        notes += more
        visits, codes = count_items([document])
        for what, count, most in (
            ("visits", visits, self.service.max_visits),
            ("codes", codes, self.service.max_codes),
        ):
            if count > most:
                raise HookProblem(413, "$.prefetch", f"{count} {what}; at most {most}")
        current = current_visit(document, context.encounter_id)
        if current is None:
            return no_cards(f"no conditions or procedures of Encounter/{context.encounter_id} "
                            "in the prefetch", notes)  # fmt: skip
        try:
            prepared = self.recommender.prepare(current, 0)
        except InvalidInput as exc:  # a converter bug, not the client's: say where anyway
            problem = exc.problems[0]
            raise HookProblem(422, "$.prefetch", f"converted patient: {problem.path}: "
                              f"{problem.message}") from None  # fmt: skip
        if not (prepared.sample.current.diagnoses or prepared.sample.current.procedures):
            return no_cards(f"no diagnosis or procedure code of Encounter/{context.encounter_id} "
                            "is in the model's vocabulary", notes)  # fmt: skip
        known = set(self.recommender.drugs)
        here = [c for c in current["visits"][-1].get("medications", []) if c in known]
        return _Ready(prepared, context, notes, list(dict.fromkeys(here)))


@dataclass
class _Ready:
    """A request ready for the model: the patient's sample and what the cards need."""

    prepared: Prepared
    context: HookContext
    notes: list[str]
    ordered_here: list[str]


EXPLAIN_ITEMS = 3  # contributions shown per drug in a card


def explain_result(recommender: Recommender, prepared: Prepared, result: dict[str, Any]) -> None:
    """Add ``explanations`` for the recommended drugs to ``result`` (issue 21), when this
    install has :mod:`leader.explain` and the record is small enough to explain."""
    try:
        from leader.explain import EXPLAIN_WORK, add_explanations, explain_work
    except ImportError:  # not in this install: cards without a "because"
        return
    if not result["recommended"] or explain_work([prepared.sample]) > EXPLAIN_WORK:
        return
    only = {"recommended": result["recommended"], "ranked": []}  # not every ranked drug
    add_explanations(recommender, [prepared], [only], EXPLAIN_ITEMS)
    result["explanations"] = only["explanations"]


def _error(path: str, message: str) -> dict[str, Any]:
    return {"detail": [{"path": path, "message": message}]}


def fhir_options(recommender: Recommender, service: Any = None) -> DocumentOptions:
    """How FHIR codings become the model's codes (:class:`leader.fhir.FhirInput`): the
    service's own FHIR settings (its drug map) when it has them, else the model's."""
    from leader.fhir import FhirInput

    fhir = getattr(service, "fhir", None)  # RecommendService.fhir: POST /v1/recommend's FHIR
    if not isinstance(fhir, FhirInput):
        fhir = FhirInput(recommender.known)
    return fhir.options


def prefetch_document(
    resources: list[dict[str, Any]], encounter_id: str, options: DocumentOptions
) -> tuple[dict[str, Any] | None, list[str]]:
    """The patient document up to the encounter (:func:`leader.fhir.patient_document`) and
    notes on what was not used; ``(None, [reason])`` when there is no such visit."""
    from dataclasses import replace

    from leader.errors import LeaderError
    from leader.fhir import patient_document

    try:
        document, problems = patient_document(resources, replace(options, encounter=encounter_id))
    except LeaderError as exc:
        return None, [str(exc)]
    except (TypeError, AttributeError, KeyError, ValueError):
        # A field of a type FHIR does not allow where the converter reads (say, a Patient's
        # extension that is a number): the client's data is malformed, not a server bug.
        raise HookProblem(
            422, "$.prefetch", "a prefetched resource is not FHIR R4 JSON (a field has the "
            "wrong type); validate it against the R4 schema",
        ) from None  # fmt: skip
    reasons = Counter(p.reason.replace("_", " ") for p in problems)
    notes = [f"{n} resource(s) not used: {why}" for why, n in sorted(reasons.items())]
    return document, notes


# ----------------------------------------------------------------------------- routes
ERROR_SCHEMA = {
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["path", "message"],
                "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
            },
        }
    },
}


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers (the one error shape)."""
    text = {
        401: "Missing or wrong bearer token (when the server has one).",
        404: "No CDS service with this id.",
        412: "A required prefetch key is missing: this service never fetches from fhirServer.",
        413: "Body, visits or codes over the server's limits.",
        415: "The body is not 'Content-Type: application/json'.",
        422: "Not a valid CDS Hooks request for this service; the path says where.",
    }
    return {
        s: {"description": text[s], "content": {"application/json": {"schema": ERROR_SCHEMA}}}
        for s in statuses
    }


def request_schema(service: Service) -> dict[str, Any]:
    """The JSON Schema of a call to ``service`` (what :func:`parse_request` accepts)."""
    fhir_id = {"type": "string", "pattern": "^[A-Za-z0-9\\-.]{1,64}$"}
    resource = {"type": "object", "required": ["resourceType"],
                "properties": {"resourceType": {"type": "string", "minLength": 1}}}  # fmt: skip
    context: dict[str, Any] = {
        "type": "object",
        "required": ["patientId"],
        "properties": {"userId": {"type": "string"}, "patientId": fhir_id, "encounterId": fhir_id},
    }
    if service.hook == "order-select":
        context["required"] = ["patientId", "selections", "draftOrders"]
        context["properties"]["selections"] = {"type": "array", "items": {"type": "string"}}
        context["properties"]["draftOrders"] = {
            "type": "object",
            "required": ["resourceType"],
            "properties": {
                "resourceType": {"const": "Bundle"},
                "entry": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["resource"],
                        "properties": {"resource": resource},
                    },  # fmt: skip
                },
            },
        }
    return {
        "type": "object",
        "required": ["hook", "hookInstance", "context", "prefetch"],
        "properties": {
            "hook": {"const": service.hook},
            "hookInstance": {"type": "string", "minLength": 1},
            "fhirServer": {"type": "string"},
            "fhirAuthorization": {"type": "object"},
            "extension": {"type": "object"},
            "context": context,
            "prefetch": {
                "type": "object",
                "description": "Prefetch key -> FHIR resource (a searchset Bundle for searches) "
                "or null (no data); keys other than the discovery's are ignored. Without "
                f"{' and '.join(REQUIRED_PREFETCH)} the answer is 412: the service never "
                "fetches from fhirServer.",
                "required": list(REQUIRED_PREFETCH),
                "properties": {key: {"oneOf": [{"type": "null"}, resource]} for key in PREFETCH},
            },
        },
    }


RESPONSE_SCHEMA = {
    "type": "object",
    "required": ["cards"],
    "properties": {
        "cards": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["summary", "indicator", "source"],
                "properties": {
                    "uuid": {"type": "string"},
                    "summary": {"type": "string", "maxLength": SUMMARY_LIMIT},
                    "detail": {"type": "string"},
                    "indicator": {"enum": ["info", "warning", "critical"]},
                    "source": {"type": "object", "required": ["label"]},
                    "suggestions": {"type": "array", "items": {"type": "object"}},
                    "selectionBehavior": {"enum": ["at-most-one", "any"]},
                },
            },
        },
        "extension": {
            "type": "object",
            "description": "leader.reason: why there are no cards; leader.notes: what was "
            "missing or not used.",
        },
    },
}


def register(api: FastAPI, service: RecommendService) -> None:
    """Add ``GET /cds-services`` and ``POST /cds-services/{id}`` (one route per service, each
    with its request schema; other ids are 404) to ``api``."""
    from leader.serve import json_response  # serve imports this module: not at the top

    hooks = CdsHooks(service)

    @api.get(
        "/cds-services",
        tags=["cds-hooks"],
        responses={
            200: {"description": "The CDS services and their prefetch templates."},
            **_responses(401),
        },
    )
    def cds_discovery() -> Response:
        """CDS Hooks 2.0 discovery: the services and their prefetch templates."""
        return json_response(discovery())

    for hook_service in SERVICES.values():
        _service_route(api, hooks, hook_service, json_response)

    @api.post("/cds-services/{service_id}", include_in_schema=False)
    async def unknown_service(service_id: str, request: Request) -> Response:
        status, answer = await hooks.handle(service_id, await request.body())  # 404
        return json_response(answer, status)


def _service_route(api: FastAPI, hooks: CdsHooks, service: Service, json_response: Any) -> None:
    async def call_service(request: Request) -> Response:
        status, answer = await hooks.handle(service.id, await request.body())
        return json_response(answer, status)

    call_service.__doc__ = (
        f"CDS Hooks 2.0 `{service.hook}`: cards with the recommended drug classes "
        "(suggestions create draft FHIR R4 MedicationRequests) and interaction warnings."
    )
    api.post(
        f"/cds-services/{service.id}",
        tags=["cds-hooks"],
        name=service.id,
        summary=service.title,
        operation_id=service.id.replace("-", "_"),
        responses={
            200: {
                "description": "Cards (none, with extension['leader.reason'], when there is "
                "nothing to say).",
                "content": {"application/json": {"schema": RESPONSE_SCHEMA}},
            },
            **_responses(401, 412, 413, 415, 422),
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": request_schema(service)}},
            }
        },
    )(call_service)
