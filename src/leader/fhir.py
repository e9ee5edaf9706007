"""FHIR R4 in: read exports, choose codings by system, build the JSON patient document.

Shared by ``leader prepare fhir`` (:mod:`leader.data.sources.fhir`), ``POST /v1/recommend``
(a Bundle or a list of one patient's resources) and the CDS Hooks service.

Inputs (:func:`iter_resources`): Bulk Data NDJSON (``*.ndjson``, ``*.ndjson.gz``: one
resource per line), Bundle JSON (``*.json``: ``entry[].resource``, e.g. a folder of
Synthea's per-patient Bundles), a single file or a folder of them (read in name order,
sub-folders included). Memory stays bounded: one line, or one Bundle file, at a time.

Resources are read as plain JSON (``json.loads``), not through a FHIR model library: a
``fhir.resources`` model validation costs ~17x a ``json.loads`` of a small Condition, and makes
``leader prepare fhir`` ~8x slower (``benchmarks/fhir_read.py --validate``), so it is an
option there (``--validate``) and a check in the tests. Every field read here is optional in
FHIR, and a malformed one is ignored, never a crash; what is missing is reported.

Codings (:func:`choose_coding`): a ``CodeableConcept`` may carry codings of several code
systems; the first system of a preference list that the concept has wins. Systems are
named by short keys (:data:`SYSTEMS`); ICD codes are stored without dots and in capitals,
as MIMIC stores them (``250.00`` -> ``25000``, ``E11.9`` -> ``E119``); ATC codes in
capitals. Default preference orders (:data:`DEFAULT_SYSTEMS`):

- diagnoses: ICD-9-CM, ICD-10-CM, SNOMED CT (the model vocabularies shipped are ICD-9);
- procedures: ICD-9-CM, ICD-10-PCS, CPT, SNOMED CT;
- medications: ATC, RxNorm (RxNorm is mapped to ATC3 where a map is given).

References (``Encounter/123``, ``urn:uuid:...`` as Synthea writes, absolute URLs, with or
without ``/_history/n``) resolve by the id they end with; a Bundle entry whose ``fullUrl``
differs from its resource's id answers to both.

>>> concept = {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"},
...                       {"system": "http://hl7.org/fhir/sid/icd-9-cm", "code": "401.9"}]}
>>> choose_coding(concept, ["icd9", "snomed"])
('icd9', '4019')
"""

from __future__ import annotations

import datetime as dt
import gzip
import json
import re
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from leader.errors import LeaderError

# Short key -> the URIs (and OIDs) of the code system, as FHIR and HL7 Terminology name them.
SYSTEMS: dict[str, tuple[str, ...]] = {
    "icd9": (  # ICD-9-CM, diagnoses (vol. 1-2) and procedures (vol. 3) share the URI
        "http://hl7.org/fhir/sid/icd-9-cm",
        "http://hl7.org/fhir/sid/icd-9",
        "http://terminology.hl7.org/CodeSystem/icd9cm",
        "http://terminology.hl7.org/CodeSystem/icd9",
        "urn:oid:2.16.840.1.113883.6.103",  # ICD-9-CM diagnoses
        "urn:oid:2.16.840.1.113883.6.104",  # ICD-9-CM procedures
        "urn:oid:2.16.840.1.113883.6.2",
    ),
    "icd10": (  # ICD-10-CM, and WHO ICD-10
        "http://hl7.org/fhir/sid/icd-10-cm",
        "http://hl7.org/fhir/sid/icd-10",
        "http://terminology.hl7.org/CodeSystem/icd10CM",
        "http://terminology.hl7.org/CodeSystem/icd10",
        "urn:oid:2.16.840.1.113883.6.90",
        "urn:oid:2.16.840.1.113883.6.3",
    ),
    "icd10pcs": (
        "http://www.cms.gov/Medicare/Coding/ICD10",
        "http://terminology.hl7.org/CodeSystem/icd10PCS",
        "urn:oid:2.16.840.1.113883.6.4",
    ),
    "snomed": ("http://snomed.info/sct", "urn:oid:2.16.840.1.113883.6.96"),
    "cpt": ("http://www.ama-assn.org/go/cpt", "urn:oid:2.16.840.1.113883.6.12"),
    "rxnorm": ("http://www.nlm.nih.gov/research/umls/rxnorm", "urn:oid:2.16.840.1.113883.6.88"),
    "atc": ("http://www.whocc.no/atc", "urn:oid:2.16.840.1.113883.6.73"),
    "ndc": ("http://hl7.org/fhir/sid/ndc", "urn:oid:2.16.840.1.113883.6.69"),
}
# Prefix of a code in a vocabulary that mixes systems (MIMIC-IV's ``icd9:`` / ``icd10:``).
PREFIX: dict[str, str] = {key: key for key in SYSTEMS} | {"icd10pcs": "icd10"}
DEFAULT_SYSTEMS: dict[str, tuple[str, ...]] = {
    "diagnosis": ("icd9", "icd10", "snomed"),
    "procedure": ("icd9", "icd10pcs", "cpt", "snomed"),
    "medication": ("atc", "rxnorm"),
}
DRUG_LEVELS: tuple[str, ...] = ("rxnorm", "atc3")
KIND_FIELDS: dict[str, str] = {  # cohort kind -> field of a visit in the patient document
    "diagnosis": "diagnoses",
    "procedure": "procedures",
    "medication": "medications",
}
CODED: dict[str, str] = {  # resource type -> cohort kind
    "Condition": "diagnosis",
    "Procedure": "procedure",
    "MedicationRequest": "medication",
    "MedicationAdministration": "medication",
    "MedicationStatement": "medication",
}
# Statuses that mean "did not happen" (FHIR R4 value sets); such resources are dropped.
VOID_STATUS: dict[str, frozenset[str]] = {
    "Encounter": frozenset({"entered-in-error", "cancelled"}),
    "Procedure": frozenset({"entered-in-error", "not-done"}),
    "MedicationRequest": frozenset({"entered-in-error", "cancelled"}),
    "MedicationAdministration": frozenset({"entered-in-error", "not-done"}),
    "MedicationStatement": frozenset({"entered-in-error", "not-taken"}),
}
VOID_VERIFICATION = frozenset({"entered-in-error", "refuted"})  # Condition.verificationStatus
RACE_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race"
ETHNICITY_URL = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity"
GENDERS = {"male": "M", "female": "F"}  # as MIMIC writes them; other values kept as given

_BY_URI: dict[str, str] = {
    uri.lower().rstrip("/"): key for key, uris in SYSTEMS.items() for uri in uris
}


def _list(value: object) -> list[Any]:
    """A JSON array, or nothing (a malformed field is ignored, not a crash)."""
    return value if isinstance(value, list) else []


def _text(value: object) -> str | None:
    return value.strip() if isinstance(value, str) and value.strip() else None


# ------------------------------------------------------------------------------ systems
def system_key(uri: object) -> str | None:
    """The short key of a code system URI, or None when it is not one of :data:`SYSTEMS`."""
    if not isinstance(uri, str):
        return None
    text = uri.strip().lower().rstrip("/")
    if text.startswith("https://"):
        text = "http://" + text[len("https://") :]
    return _BY_URI.get(text)


def parse_systems(text: str | Sequence[str], what: str) -> tuple[str, ...]:
    """``"icd10,snomed"`` or a list of keys/URIs -> keys; unknown names are an error."""
    names = text.split(",") if isinstance(text, str) else list(text)
    keys: list[str] = []
    for name in (n.strip() for n in names):
        if not name:
            continue
        key = name.lower() if name.lower() in SYSTEMS else system_key(name)
        if key is None:
            raise LeaderError(
                f"{what}: unknown code system {name!r} (known: {', '.join(SYSTEMS)}, "
                "or one of their URIs)"
            )
        keys.append(key)
    if not keys:
        raise LeaderError(f"{what}: name at least one code system (known: {', '.join(SYSTEMS)})")
    return tuple(dict.fromkeys(keys))


def normalize_code(key: str, code: str) -> str:
    """A code as the project's vocabularies store it: ICD without dots, ICD and ATC upper."""
    code = code.strip()
    if key in ("icd9", "icd10", "icd10pcs"):
        return code.replace(".", "").replace(" ", "").upper()
    if key == "atc":
        return code.replace(" ", "").upper()
    return code


def codings(concept: object) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept that have a code (others are useless here)."""
    if not isinstance(concept, dict):
        return []
    found = concept.get("coding")
    if not isinstance(found, list):
        return []
    return [c for c in found if isinstance(c, dict) and isinstance(c.get("code"), str)]


def choose_coding(concept: object, systems: Sequence[str]) -> tuple[str, str] | None:
    """``(system key, normalised code)`` of the first preferred system the concept has.

    ``systems``: keys of :data:`SYSTEMS` in preference order. Empty codes are skipped.
    """
    found: dict[str, str] = {}
    for coding in codings(concept):
        key = system_key(coding.get("system"))
        if key is not None and key not in found:
            code = normalize_code(key, coding["code"])
            if code:
                found[key] = code
    for key in systems:
        if key in found:
            return key, found[key]
    return None


def display_of(concept: object, key: str, code: str) -> str | None:
    """The display text of the coding chosen (else the concept's text)."""
    for coding in codings(concept):
        if system_key(coding.get("system")) == key and normalize_code(key, coding["code"]) == code:
            shown = coding.get("display")
            if isinstance(shown, str) and shown.strip():
                return shown.strip()
    text = concept.get("text") if isinstance(concept, dict) else None
    return text.strip() if isinstance(text, str) and text.strip() else None


def systems_seen(concept: object) -> list[str]:
    """The system URIs of a concept's codings (for messages about unknown systems)."""
    return [str(c.get("system") or "(no system)") for c in codings(concept)]


# ------------------------------------------------------------------------------ reading
def iter_entries(
    path: str | Path, types: Container[str] | None = None
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """``(resource, fullUrl)`` from a file or a folder of NDJSON / Bundle files.

    ``types``: resource types the caller reads; an NDJSON line of another type (told by its
    only ``"resourceType"`` key) is not parsed, and comes as ``{"resourceType": type}``.
    """
    files = fhir_files(path)
    for file in files:
        yield from _file_entries(file, types)


READ_TYPES = frozenset({"Patient", "Encounter", "Medication", *CODED})  # what a cohort needs


def fhir_files(path: str | Path) -> list[Path]:
    """The files a path names: itself, or the FHIR files under a folder in name order."""
    root = Path(path)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and _readable(p))
        if not files:
            raise LeaderError(
                f"{root}: no FHIR files (*.ndjson, *.ndjson.gz, *.json, *.json.gz) in this folder"
            )
        return files
    if root.is_file():
        return [root]
    raise LeaderError(f"{root}: no such file or folder")


def iter_resources(path: str | Path) -> Iterator[dict[str, Any]]:
    """Every resource of a file or folder (Bulk Data NDJSON or Bundles), one at a time."""
    for resource, _ in iter_entries(path):
        yield resource


def _readable(file: Path) -> bool:
    name = file.name.lower()
    return name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz"))


def _open(file: Path) -> Any:
    if file.name.lower().endswith(".gz"):
        return gzip.open(file, "rt", encoding="utf-8")
    return file.open(encoding="utf-8")


def _file_entries(
    file: Path, types: Container[str] | None = None
) -> Iterator[tuple[dict[str, Any], str | None]]:
    name = file.name.lower()
    if name.endswith((".ndjson", ".ndjson.gz", ".jsonl", ".jsonl.gz")):
        with _open(file) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                if types is not None:
                    skipped = _other_type(line, types)
                    if skipped is not None:
                        yield {"resourceType": skipped}, None
                        continue
                try:
                    resource = json.loads(line)
                except ValueError as exc:
                    raise LeaderError(f"{file}: line {number}: not JSON ({exc})") from None
                if not isinstance(resource, dict) or "resourceType" not in resource:
                    raise LeaderError(
                        f"{file}: line {number}: not a FHIR resource (no resourceType)"
                    )
                yield from _entries_of(resource, None)
        return
    try:
        with _open(file) as handle:
            document = json.load(handle)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LeaderError(f"{file}: not JSON ({exc})") from None
    if isinstance(document, list):
        items: list[Any] = document
    elif isinstance(document, dict) and "resourceType" in document:
        items = [document]
    else:
        raise LeaderError(f"{file}: not a FHIR Bundle or resource (no resourceType)")
    for item in items:
        if isinstance(item, dict) and "resourceType" in item:
            yield from _entries_of(item, None)


_TYPE = re.compile(r'"resourceType"\s*:\s*"([A-Za-z]+)"')


def _other_type(line: str, types: Container[str]) -> str | None:
    """The type of a line not worth parsing, or None (parse it: wanted, or not sure)."""
    if line.count('"resourceType"') != 1:  # contained resources: their type could come first
        return None
    found = _TYPE.search(line)
    if found is None or found.group(1) in types or found.group(1) == "Bundle":
        return None
    return found.group(1)


def _entries_of(
    resource: dict[str, Any], full_url: str | None
) -> Iterator[tuple[dict[str, Any], str | None]]:
    """A resource, or the resources of a Bundle (nested Bundles included)."""
    if resource.get("resourceType") != "Bundle":
        yield resource, full_url
        return
    for entry in _list(resource.get("entry")):
        if not isinstance(entry, dict):
            continue
        inner = entry.get("resource")
        if isinstance(inner, dict) and "resourceType" in inner:
            url = entry.get("fullUrl")
            yield from _entries_of(inner, url if isinstance(url, str) else None)


def document_entries(document: Any) -> list[tuple[dict[str, Any], str | None]] | None:
    """The resources of a request body (a Bundle, a resource or a list), or None if not FHIR."""
    if isinstance(document, dict) and isinstance(document.get("resourceType"), str):
        return list(_entries_of(document, None))
    if (
        isinstance(document, list)
        and document
        and all(isinstance(r, dict) and isinstance(r.get("resourceType"), str) for r in document)
    ):
        return [e for r in document for e in _entries_of(r, None)]
    return None


# ------------------------------------------------------------------------------ references
def reference_id(reference: object) -> str | None:
    """The id a Reference points at: ``Encounter/1``, ``urn:uuid:x``, URLs, ``#contained``."""
    if isinstance(reference, dict):
        reference = reference.get("reference")
    if not isinstance(reference, str) or not reference.strip():
        return None
    text = reference.strip()
    if text.startswith("urn:uuid:") or text.startswith("urn:oid:"):
        return text[9:] or None
    if "/_history/" in text:
        text = text.split("/_history/", 1)[0]
    return text.rstrip("/").rsplit("/", 1)[-1] or None


def own_ids(resource: dict[str, Any], full_url: str | None) -> list[str]:
    """The ids a resource answers to: its ``id`` and its entry's ``fullUrl``."""
    ids = []
    rid = resource.get("id")
    if isinstance(rid, str) and rid:
        ids.append(rid)
    if full_url:
        alias = reference_id(full_url)
        if alias and alias not in ids:
            ids.append(alias)
    return ids


def encounter_of(resource: dict[str, Any]) -> str | None:
    """The visit a coded resource belongs to: ``encounter`` (R4, R5) or ``context`` (R4
    MedicationStatement / MedicationAdministration; STU3 Condition / Procedure)."""
    for name in ("encounter", "context"):
        reference = resource.get(name)
        if isinstance(reference, dict):
            ref = reference.get("reference")
            if isinstance(ref, str) and (ref.startswith("#") or "EpisodeOfCare/" in ref):
                continue
            found = reference_id(reference)
            if found:
                return found
    return None


def medication_concept(resource: dict[str, Any]) -> tuple[object, str | None]:
    """``(CodeableConcept, None)`` or ``(None, referenced Medication id)``.

    R4: ``medicationCodeableConcept`` / ``medicationReference``; R5: ``medication``
    (a CodeableReference with ``concept`` or ``reference``). ``#id`` resolves in ``contained``.
    """
    concept = resource.get("medicationCodeableConcept")
    reference = resource.get("medicationReference")
    r5 = resource.get("medication")
    if concept is None and reference is None and isinstance(r5, dict):
        concept, reference = r5.get("concept"), r5.get("reference")
    if concept is not None:
        return concept, None
    if isinstance(reference, dict):
        ref = reference.get("reference")
        if isinstance(ref, str) and ref.startswith("#"):
            for contained in _list(resource.get("contained")):
                if isinstance(contained, dict) and contained.get("id") == ref[1:]:
                    return contained.get("code"), None
            return None, None
        return None, reference_id(reference)
    return None, None


def void_reason(resource: dict[str, Any]) -> str | None:
    """Why a resource did not happen (its status), or None when it counts."""
    kind = resource.get("resourceType")
    status = resource.get("status")
    if isinstance(status, str) and status in VOID_STATUS.get(str(kind), frozenset()):
        return status.replace("-", "_")
    if kind == "Condition":
        for code in codings(resource.get("verificationStatus")):
            if code["code"] in VOID_VERIFICATION:
                return str(code["code"]).replace("-", "_")
    return None


# ------------------------------------------------------------------------------ times
def parse_instant(text: object) -> tuple[dt.datetime, bool] | None:
    """A FHIR dateTime -> (naive UTC datetime, had a zone); partial dates are the 1st."""
    if not isinstance(text, str) or not text.strip():
        return None
    value = text.strip()
    if len(value) == 4 and value.isdigit():
        value += "-01-01"
    elif len(value) == 7 and value[4] == "-":
        value += "-01"
    try:
        parsed = dt.datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            return parsed, False
        return parsed.astimezone(dt.UTC).replace(tzinfo=None), True
    except (ValueError, OverflowError):  # not a date, or out of range once in UTC
        return None


def encounter_start(resource: dict[str, Any]) -> str | None:
    """``period.start`` (R4; R5 ``actualPeriod.start``) as written."""
    for name in ("period", "actualPeriod"):
        period = resource.get(name)
        if isinstance(period, dict) and isinstance(period.get("start"), str):
            return str(period["start"])
    return None


def age_years(birth: dt.date, at: dt.date) -> int:
    return at.year - birth.year - ((at.month, at.day) < (birth.month, birth.day))


# ------------------------------------------------------------------------------ profile
def patient_profile(patient: dict[str, Any]) -> dict[str, str]:
    """gender (``M`` / ``F`` / as given), US Core race and ethnicity (OMB category, else text)."""
    profile: dict[str, str] = {}
    gender = patient.get("gender")
    if isinstance(gender, str) and gender:
        profile["gender"] = GENDERS.get(gender, gender)
    for extension in _list(patient.get("extension")):
        if not isinstance(extension, dict):
            continue
        url = extension.get("url")
        name = "race" if url == RACE_URL else "ethnicity" if url == ETHNICITY_URL else None
        if name is not None:
            value = _us_core_value(extension)
            if value:
                profile[name] = value
    return profile


def _us_core_value(extension: dict[str, Any]) -> str | None:
    category = text = None
    for part in _list(extension.get("extension")):
        if not isinstance(part, dict):
            continue
        if part.get("url") == "ombCategory" and category is None:
            coding = part.get("valueCoding")
            if isinstance(coding, dict):
                category = _text(coding.get("display")) or _text(coding.get("code"))
        elif part.get("url") == "text":
            text = _text(part.get("valueString"))
    value = category or text
    return str(value).strip() if value else None


def birth_date(patient: dict[str, Any]) -> dt.date | None:
    found = parse_instant(patient.get("birthDate"))
    return found[0].date() if found else None


# ------------------------------------------------------------------------------ drug maps
def read_drug_map(path: str | Path) -> dict[str, str]:
    """RxCUI -> ATC3 from a CSV: ``rxcui2atc4.csv`` (``RXCUI,ATC4``, the first row of each
    RxCUI, as the MIMIC chain takes it) or any table with a column ``rxcui`` (or ``rxnorm``)
    and ``atc3`` / ``atc4`` / ``atc`` (cut to 4 characters)."""
    from leader.data.tables import read_table

    file = Path(path)
    if not file.is_file():
        raise LeaderError(f"{file}: drug map not found (RxCUI -> ATC, e.g. rxcui2atc4.csv)")
    table = read_table(
        file, [], ["rxcui", "rxnorm", "atc3", "atc4", "atc"], text=["rxcui", "rxnorm"]
    )
    key = next((c for c in ("rxcui", "rxnorm") if c in table.columns), None)
    atc = next((c for c in ("atc3", "atc4", "atc") if c in table.columns), None)
    if key is None or atc is None:
        raise LeaderError(
            f"{file}: a drug map needs a column rxcui (or rxnorm) and atc3, atc4 or atc "
            f"(found: {', '.join(table.columns) or 'nothing'})"
        )
    rows = table[[key, atc]].astype("string")
    rows[key] = rows[key].str.strip()
    rows[atc] = rows[atc].str.strip().str.upper().str[:4]
    rows = rows.dropna()
    rows = rows[(rows[key] != "") & (rows[atc] != "")].drop_duplicates(key, keep="first")
    return dict(zip(rows[key].astype(str), rows[atc].astype(str), strict=True))


# ------------------------------------------------------------------------------ documents
@dataclass
class DocumentOptions:
    """How :func:`patient_document` turns resources into the JSON patient."""

    systems: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SYSTEMS))
    drug_level: str = "atc3"  # "atc3": ATC codings cut to 4 characters, RxNorm mapped
    drug_map: Mapping[str, str] = field(default_factory=dict)  # RxCUI -> ATC3
    # kind -> the model's codes: a concept takes its first coding the model knows, written
    # as the vocabulary writes it (bare, or ``icd10:I10`` in a vocabulary that mixes systems)
    vocabulary: Mapping[str, Container[str]] | None = None
    encounter: str | None = None  # the current visit (default: the latest encounter)
    max_visits: int = 500  # the latest visits kept (the patient schema's limit)
    # kinds whose vocabulary writes ``system:code``: codes it lacks are reported that way too
    prefixed: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Problem:
    """Something in the resources that was not used, and why (``reason`` is a short key)."""

    reason: str  # unknown_system, unmapped_drug, without_encounter, encounter_not_found, ...
    resource: str  # "Condition/123"
    message: str
    kind: str | None = None  # diagnosis / procedure / medication
    visit: int | None = None  # position of the visit in the document, when it has one
    code: str | None = None
    system: str | None = None


def concept_code(
    concept: object, kind: str, options: DocumentOptions
) -> tuple[str, str] | tuple[None, str]:
    """``(code, system key)`` as the cohort stores it, or ``(None, reason)``.

    Medications at ``atc3``: an ATC coding cut to its first 4 characters, else RxNorm
    through ``options.drug_map``. With ``options.vocabulary`` the first preferred coding the
    vocabulary knows wins (bare or system-prefixed); when none is known the preferred one is
    returned, so the caller reports it as an unknown code. Without a vocabulary, codes of a
    kind read from several systems are written ``key:code`` (``snomed:44054006``), as
    ``leader prepare fhir`` stores them; from one system (or ATC3 drugs), bare.
    """
    systems = options.systems[kind]
    found: dict[str, list[str]] = {}  # system key -> its codes in the concept, in order
    for coding in codings(concept):
        key = system_key(coding.get("system"))
        code = normalize_code(key, coding["code"]) if key is not None else ""
        if key is not None and code:
            found.setdefault(key, []).append(code)
    atc3 = kind == "medication" and options.drug_level == "atc3"
    candidates: list[tuple[str, str]] = []  # (code, key); "" = an RxNorm code without ATC3
    for key in systems:
        for code in found.get(key, []):
            if atc3 and key == "atc":
                code = code[:4]
            elif atc3 and key == "rxnorm":  # e.g. Epic lists SCD, SBD and IN codings: any maps
                code = options.drug_map.get(code, "")[:4]
            elif atc3:
                continue
            candidates.append((code, key))
    usable = [(c, k) for c, k in candidates if c]
    if not usable:
        return (None, "unmapped_drug") if candidates else (None, "unknown_system")
    if options.vocabulary is not None:
        known = options.vocabulary[kind]
        for code, key in usable:
            for written in (code, f"{PREFIX[key]}:{code}"):
                if written in known:
                    return written, key
        code, key = usable[0]
        return (f"{PREFIX[key]}:{code}" if kind in options.prefixed else code), key
    code, key = usable[0]
    if len(systems) > 1 and not atc3:
        return f"{PREFIX[key]}:{code}", key  # several systems: kept apart, as MIMIC-IV does
    return code, key


def _label(resource: dict[str, Any]) -> str:
    return f"{resource.get('resourceType')}/{resource.get('id', '?')}"


def patient_document(
    resources: Iterable[dict[str, Any] | tuple[dict[str, Any], str | None]],
    options: DocumentOptions | None = None,
) -> tuple[dict[str, Any], list[Problem]]:
    """One patient's resources -> the ``/v1/recommend`` patient document and the problems.

    ``resources``: resources, or ``(resource, fullUrl)`` pairs (:func:`document_entries`).
    Visits are the patient's encounters with a start time, oldest first, up to the current
    one (``options.encounter``, else the latest); earlier encounters without any code are
    left out. Profile: :func:`patient_profile` plus the age band at the first visit.
    Raises LeaderError when there is no encounter to recommend for or several patients.
    """
    from leader.data.sources.common import age_band

    options = options or DocumentOptions()
    problems: list[Problem] = []
    patients: dict[str, dict[str, Any]] = {}
    encounters: dict[str, dict[str, Any]] = {}
    medications: dict[str, dict[str, Any]] = {}
    coded: list[dict[str, Any]] = []
    patient_ids: set[str] = set()
    subjects: list[tuple[dict[str, Any], list[str]]] = []
    for item in resources:
        resource, full_url = item if isinstance(item, tuple) else (item, None)
        kind = resource.get("resourceType")
        if not isinstance(kind, str):
            continue
        ids = own_ids(resource, full_url)
        if kind == "Patient":
            patients.setdefault(ids[0] if ids else "", resource)
            patient_ids.update(ids)
        elif kind == "Encounter":
            subjects.append((resource, ids))
        elif kind == "Medication":
            for rid in ids:
                medications[rid] = resource
        elif kind in CODED:
            subjects.append((resource, ids))
    if len(patients) > 1:
        raise LeaderError(
            f"the resources hold {len(patients)} patients ({', '.join(list(patients)[:5])}); "
            "send one patient's resources per request"
        )
    for resource, ids in subjects:
        subject = reference_id(resource.get("subject") or resource.get("patient"))
        if patient_ids and subject is not None and subject not in patient_ids:
            message = f"subject {subject!r} is not the Patient of these resources: not used"
            problems.append(Problem("another_patient", _label(resource), message))
        elif resource["resourceType"] == "Encounter":
            for rid in ids:
                encounters[rid] = resource
        else:
            coded.append(resource)
    visits = _visits(encounters, options, problems)
    position = {id(resource): i for i, (_, resource) in enumerate(visits)}
    codes: list[dict[str, list[str]]] = [{f: [] for f in KIND_FIELDS.values()} for _ in visits]
    for resource in coded:
        _add_codes(resource, encounters, medications, position, codes, options, problems)
    with_problems = {p.visit for p in problems}
    keep = [
        i
        for i in range(len(visits))
        if i == len(visits) - 1
        or i in with_problems
        or any(codes[i][f] for f in KIND_FIELDS.values())
    ]
    if len(keep) > options.max_visits:
        message = f"{len(keep)} visits with codes; the latest {options.max_visits} are kept"
        problems.append(Problem("visits_truncated", "Encounter", message))
        keep = keep[-options.max_visits :]
    renumber = {old: new for new, old in enumerate(keep)}
    problems = [p if p.visit is None else replace(p, visit=renumber.get(p.visit)) for p in problems]
    patient = next(iter(patients.values()), None)
    document: dict[str, Any] = {"visits": [_visit(visits[i], codes[i]) for i in keep]}
    if patient is not None:
        if isinstance(patient.get("id"), str):
            document["id"] = patient["id"]
        profile = patient_profile(patient)
        born = birth_date(patient)
        first = parse_instant(encounter_start(visits[keep[0]][1]))
        if born is not None and first is not None:
            profile["age_band"] = age_band(age_years(born, first[0].date()))
        document["profile"] = profile
    return document, problems


def _visit(visit: tuple[str, dict[str, Any]], codes: dict[str, list[str]]) -> dict[str, Any]:
    rid, resource = visit
    own = resource.get("id")
    out: dict[str, Any] = {"id": own if isinstance(own, str) and own else rid}
    start = encounter_start(resource)
    if start is not None:
        out["time"] = start
    return {**out, **{f: list(dict.fromkeys(c)) for f, c in codes.items()}}


def _visits(
    encounters: dict[str, dict[str, Any]], options: DocumentOptions, problems: list[Problem]
) -> list[tuple[str, dict[str, Any]]]:
    """``(id, Encounter)`` oldest first, up to the current encounter."""
    timed: list[tuple[dt.datetime, str, dict[str, Any]]] = []
    seen: set[int] = set()
    for rid, resource in encounters.items():
        if id(resource) in seen:
            continue
        seen.add(id(resource))
        reason = void_reason(resource)
        start = parse_instant(encounter_start(resource))
        if start is None and reason is None and options.encounter in own_ids(resource, rid):
            continue  # the current visit, not started yet: placed last below
        if reason is not None or start is None:
            why = reason or "without_start"
            message = (
                f"encounter status {resource.get('status')!r}: it did not happen"
                if reason
                else "encounter without a readable period.start: not a visit"
            )
            problems.append(Problem(f"encounter_{why}", _label(resource), message))
            continue
        timed.append((start[0], rid, resource))
    timed.sort(key=lambda t: (t[0], t[1]))
    visits = [(rid, resource) for _, rid, resource in timed]
    if options.encounter is not None:
        named = [i for i, (rid, r) in enumerate(visits) if options.encounter in own_ids(r, rid)]
        current = encounters.get(options.encounter)
        if named:
            visits = visits[: named[0] + 1]
        elif current is not None and void_reason(current) is None:
            visits.append((options.encounter, current))  # not started yet: after the others
        else:
            raise LeaderError(f"encounter {options.encounter!r} not found among the visits")
    if not visits:
        raise LeaderError("no Encounter with a period.start: nothing to recommend for")
    return visits


def _add_codes(
    resource: dict[str, Any],
    encounters: dict[str, dict[str, Any]],
    medications: dict[str, dict[str, Any]],
    position: dict[int, int],
    codes: list[dict[str, list[str]]],
    options: DocumentOptions,
    problems: list[Problem],
) -> None:
    kind = CODED[str(resource["resourceType"])]
    label = _label(resource)
    reason = void_reason(resource)
    if reason is not None:
        problems.append(Problem(reason, label, f"status {reason}: not used", kind))
        return
    encounter = encounter_of(resource)
    if encounter is None:
        problems.append(
            Problem("without_encounter", label, "no encounter: not tied to a visit", kind)
        )
        return
    target = encounters.get(encounter)
    visit = position.get(id(target)) if target is not None else None
    if visit is None:
        problems.append(
            Problem(
                "encounter_not_found" if target is None else "encounter_not_a_visit",
                label,
                f"encounter {encounter!r} is not among the visits",
                kind,
            )
        )
        return
    if kind == "medication":
        concept, med_id = medication_concept(resource)
        if med_id is not None:
            concept = (medications.get(med_id) or {}).get("code")
    else:
        concept = resource.get("code")
    code, key = concept_code(concept, kind, options)
    if code is None:
        seen = systems_seen(concept)
        first = codings(concept)[0] if codings(concept) else {}
        message = (
            "RxNorm code without an ATC3 mapping (give a drug map)"
            if key == "unmapped_drug"
            else f"no coding of a known system ({', '.join(seen) or 'no coding'}; "
            f"use one of {', '.join(options.systems[kind])})"
        )
        problems.append(
            Problem(
                key,
                label,
                message,
                kind,
                visit,
                str(first.get("code", "")) or None,
                str(first.get("system", "")) or None,
            )
        )
        return
    codes[visit][KIND_FIELDS[kind]].append(code)


# ------------------------------------------------------------------------------ the service
_ATC3 = re.compile(r"^[A-Z][0-9]{2}[A-Z]$")


def is_fhir(document: Any) -> bool:
    """A Bundle, a resource, or a list of resources (a JSON patient has no ``resourceType``)."""
    return document_entries(document) is not None


class FhirInput:
    """``POST /v1/recommend`` with FHIR: resources -> the JSON patient, matched to a model.

    ``known``: the model's codes per kind. Each concept takes its first coding (in the
    default preference order) that the vocabulary holds, bare or system-prefixed; drugs go
    to ATC3 when the model's drugs are ATC3 classes (ATC codings cut, RxNorm through
    ``drug_map``). Codings of no known system, and unmapped drugs, are reported like
    unknown codes (:meth:`report`).
    """

    def __init__(
        self, known: Mapping[str, Container[str]], drug_map: Mapping[str, str] | None = None
    ) -> None:
        drugs = known["medication"]
        atc3 = isinstance(drugs, Iterable) and all(_ATC3.match(str(d)) for d in drugs)
        systems = dict(DEFAULT_SYSTEMS)
        if not atc3:
            systems["medication"] = ("rxnorm", "atc", "ndc", "snomed")
        prefixed = frozenset(
            kind
            for kind, codes in known.items()
            if isinstance(codes, Iterable) and any(":" in str(c) for c in codes)
        )
        self.options = DocumentOptions(
            systems=systems,
            drug_level="atc3" if atc3 else "rxnorm",
            drug_map=drug_map or {},
            vocabulary=known,
            prefixed=prefixed,
        )

    def convert(
        self, document: Any, encounter: str | None = None
    ) -> tuple[dict[str, Any], list[Problem]]:
        """The patient document and its problems; LeaderError when it cannot be built."""
        entries = document_entries(document)
        if entries is None:
            raise LeaderError("not FHIR: expected a Bundle, a resource or a list of resources")
        options = replace(self.options, encounter=encounter)
        return patient_document(entries, options)

    @staticmethod
    def unknown(document: dict[str, Any], problems: Sequence[Problem]) -> list[Problem]:
        """The problems to report as unknown codes: codes of visits the model reads (the
        current visit's drugs are what it predicts, so they are not read)."""
        last = len(document["visits"]) - 1
        return [
            p
            for p in problems
            if p.reason in ("unknown_system", "unmapped_drug")
            and p.visit is not None
            and not (p.kind == "medication" and p.visit == last)
        ]

    def report(
        self, prepared: Any, document: dict[str, Any], problems: Sequence[Problem], strict: bool
    ) -> None:
        """Add the problems to a prepared patient's unknown codes (:class:`Prepared`); under
        ``strict`` raise :class:`leader.recommend.InvalidInput` instead, as for unknown codes."""
        from leader.recommend import MAX_UNKNOWN_LISTED, InputProblem, InvalidInput

        unknown = self.unknown(document, problems)
        if strict and unknown:
            raise InvalidInput(
                [
                    InputProblem(
                        prepared.index,
                        "$",
                        f"{p.resource}: {p.kind} {p.code!r} of system {p.system!r}: "
                        f"{p.message} (drop strict to ignore it)",
                    )
                    for p in unknown[:10]
                ]
            )
        room = max(0, MAX_UNKNOWN_LISTED - len(prepared.unknown))
        prepared.unknown.extend(unknown_entry(p) for p in unknown[:room])
        prepared.unknown_count += len(unknown)


def unknown_entry(problem: Problem) -> dict[str, Any]:
    """A problem as an entry of a result's ``unknown_codes``."""
    return {
        "visit": problem.visit,
        "kind": problem.kind,
        "code": problem.code or "",
        "system": problem.system or "",
        "reason": problem.reason,
        "resource": problem.resource,
    }
