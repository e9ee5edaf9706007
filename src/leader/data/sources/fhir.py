"""FHIR R4 exports (Bulk Data NDJSON or Bundles, e.g. Synthea's) -> :class:`RawCohort`.

Read in one streaming pass (:func:`leader.fhir.iter_entries`: one NDJSON line or one
Bundle file in memory at a time); what is kept is one small row per visit, per code and
per patient, so memory grows with the cohort, not with the export's size.

- ``Patient``: gender (``M`` / ``F`` / as given), US Core race and ethnicity extensions
  (OMB category, else their text), ``birthDate`` for the age band at each visit (the
  cohort takes the first kept visit's).
- ``Encounter``: a visit of the patient in ``subject``; time = ``period.start`` (R5:
  ``actualPeriod.start``). A time with a zone is converted to UTC and stored without it
  (:mod:`leader.data.times`); a date alone is midnight. Status ``entered-in-error`` or
  ``cancelled``, or no subject: counted and dropped.
- ``Condition`` (diagnoses), ``Procedure`` (procedures), ``MedicationRequest`` /
  ``MedicationAdministration`` / ``MedicationStatement`` (medications): tied to a visit by
  ``encounter`` (R4 MedicationAdministration / MedicationStatement: ``context``). Without
  one, with an encounter that is not a kept visit, with a void status (entered in error,
  refuted, not done, cancelled, not taken) or without a coding of a chosen system:
  counted by reason (``<type>_resources_<reason>`` in ``stats.json``) and dropped.
  ``medicationReference`` resolves to a ``Medication`` resource (or a contained one).
- Codings by system, in the preference order given (:func:`leader.fhir.choose_coding`);
  one system per kind: codes as given (ICD without dots); several: ``key:code``
  (``icd10:I10``, ``snomed:44054006``), so systems never merge.
- ``drug_level``: ``rxnorm`` keeps the drug codes as given; ``atc3`` takes an ATC coding
  (first 4 characters) or maps RxNorm through ``RESOURCES/rxcui2atc4.csv`` or
  ``drug_map``; unmapped drugs are counted and dropped.

Resources are plain JSON here; ``validate=True`` checks each one with ``fhir.resources``
(FHIR R4B models; the read is ~8x slower, so it is optional) and drops invalid ones.

>>> raw = read_fhir(Path("synthea/output/fhir"))                   # doctest: +SKIP
>>> raw.counts["condition_resources"]                               # doctest: +SKIP
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from leader.data.cohort import RawCohort
from leader.data.sources.common import age_bands, code_rows, dedupe_visits, years_between
from leader.data.times import date_or_datetime
from leader.errors import LeaderError
from leader.fhir import (
    CODED,
    DRUG_LEVELS,
    READ_TYPES,
    DocumentOptions,
    birth_date,
    codings,
    concept_code,
    display_of,
    encounter_of,
    encounter_start,
    fhir_files,
    iter_entries,
    medication_concept,
    own_ids,
    parse_instant,
    parse_systems,
    patient_profile,
    read_drug_map,
    reference_id,
    void_reason,
)

PROFILE_FIELDS: tuple[str, ...] = ("gender", "race", "ethnicity")
MAX_INVALID_LISTED = 5  # first validation errors kept in stats.json


class _Export:
    """What one pass over an export keeps: small rows, counters, names."""

    def __init__(self, options: DocumentOptions, validate: bool) -> None:
        self.options = options
        self.counts: Counter[str] = Counter()
        self.other_types: Counter[str] = Counter()
        self.unknown_systems: Counter[str] = Counter()  # system URI -> codings not used
        self.patients: dict[str, dict[str, Any]] = {}  # id -> profile + birth
        self.encounters: list[tuple[str, str, Any]] = []  # visit id, patient ref, start
        self.alias: dict[str, str] = {}  # fullUrl id -> resource id, where they differ
        self.codes: list[tuple[str, str, str, str]] = []  # encounter ref, kind, code, type
        self.pending: list[tuple[str, str, str]] = []  # encounter ref, Medication id, type
        self.medications: dict[str, Any] = {}  # Medication id -> its code (CodeableConcept)
        self.names: dict[str, dict[str, str]] = {kind: {} for kind in CODED.values()}
        self.strings: dict[str, str] = {}  # interned ids and codes
        self.zoned = 0
        self.unzoned = 0
        self.validator = _validator() if validate else None
        self.invalid: list[str] = []

    def add(self, resource: dict[str, Any], full_url: str | None) -> None:
        kind = resource.get("resourceType")
        if not isinstance(kind, str):
            self.counts["resources_without_type"] += 1
            return
        prefix = f"{kind.lower()}_resources"
        if self.validator is not None and kind in READ_TYPES and not self._valid(resource, prefix):
            return
        if kind in ("Patient", "Encounter", "Medication"):
            ids = own_ids(resource, full_url)
            if len(ids) > 1:
                self.alias[ids[1]] = ids[0]
        if kind == "Patient":
            self.counts[prefix] += 1
            self._patient(resource, ids)
        elif kind == "Encounter":
            self.counts[prefix] += 1
            self._encounter(resource, ids, prefix)
        elif kind == "Medication":
            self.counts[prefix] += 1
            if ids:
                self.medications[ids[0]] = resource.get("code")
        elif kind in CODED:
            self.counts[prefix] += 1
            self._coded(resource, str(kind), prefix)
        else:
            self.other_types[str(kind)] += 1

    def _valid(self, resource: dict[str, Any], prefix: str) -> bool:
        assert self.validator is not None
        problem = self.validator(resource)
        if problem is None:
            return True
        self.counts[f"{prefix}_invalid"] += 1
        if len(self.invalid) < MAX_INVALID_LISTED:
            self.invalid.append(f"{resource.get('resourceType')}/{resource.get('id')}: {problem}")
        return False

    def _patient(self, resource: dict[str, Any], ids: list[str]) -> None:
        if not ids:
            self.counts["patient_resources_without_id"] += 1
            return
        profile: dict[str, Any] = dict(patient_profile(resource))
        profile["birth"] = birth_date(resource)
        self.patients[ids[0]] = profile

    def _encounter(self, resource: dict[str, Any], ids: list[str], prefix: str) -> None:
        reason = void_reason(resource)
        patient = reference_id(resource.get("subject") or resource.get("patient"))
        if reason is not None:
            self.counts[f"{prefix}_{reason}"] += 1
        elif not ids:
            self.counts[f"{prefix}_without_id"] += 1
        elif patient is None:
            self.counts[f"{prefix}_without_patient"] += 1
        else:
            start = parse_instant(encounter_start(resource))
            if start is not None:
                self.zoned += start[1]
                self.unzoned += not start[1]
            patient = self.strings.setdefault(patient, patient)
            self.encounters.append((ids[0], patient, start[0] if start else None))

    def _coded(self, resource: dict[str, Any], kind: str, prefix: str) -> None:
        reason = void_reason(resource)
        if reason is not None:
            self.counts[f"{prefix}_{reason}"] += 1
            return
        encounter = encounter_of(resource)
        if encounter is None:
            self.counts[f"{prefix}_without_encounter"] += 1
            return
        if CODED[kind] == "medication":
            concept, medication = medication_concept(resource)
            if medication is not None:
                self.pending.append((encounter, medication, kind))
                return
            if concept is None:
                self.counts[f"{prefix}_without_medication"] += 1
                return
        else:
            concept = resource.get("code")
        self._code(encounter, concept, kind, prefix)

    def _code(self, encounter: str, concept: Any, kind: str, prefix: str) -> None:
        cohort_kind = CODED[kind]
        code, key = concept_code(concept, cohort_kind, self.options)
        if code is None:
            reason = "unmapped" if key == "unmapped_drug" else "without_known_system"
            self.counts[f"{prefix}_{reason}"] += 1
            if reason == "without_known_system":
                for coding in codings(concept):
                    self.unknown_systems[str(coding.get("system"))] += 1
            return
        names = self.names[cohort_kind]
        if code not in names:
            bare = code.split(":", 1)[1] if ":" in code and key != "atc" else code
            shown = display_of(concept, key, bare) if key != "atc" else None
            if shown:
                names[code] = shown
        # One string object per distinct encounter / code: rows share them (a 1 GB export
        # holds each encounter id in every resource of the visit, each a new string).
        encounter = self.strings.setdefault(encounter, encounter)
        code = self.strings.setdefault(code, code)
        self.codes.append((encounter, cohort_kind, code, kind))

    def resolve_medications(self) -> None:
        """Requests that named a Medication resource, now that every one has been read."""
        for encounter, medication, kind in self.pending:
            prefix = f"{kind.lower()}_resources"
            target = self.alias.get(medication, medication)
            if target not in self.medications:
                self.counts[f"{prefix}_medication_not_found"] += 1
                continue
            self._code(encounter, self.medications[target], kind, prefix)
        self.pending = []


def _validator() -> Any:
    """resource -> None, or the first validation error (``fhir.resources``, R4B models)."""
    from leader.optional import require

    require("fhir.resources", "fhir", "leader prepare fhir --validate")
    from fhir.resources.R4B import get_fhir_model_class

    models: dict[str, Any] = {}

    def check(resource: dict[str, Any]) -> str | None:
        kind = str(resource.get("resourceType"))
        if kind not in models:
            try:
                models[kind] = get_fhir_model_class(kind)
            except (KeyError, ValueError):
                models[kind] = None
        if models[kind] is None:
            return f"unknown resourceType {kind!r}"
        try:
            models[kind].model_validate(resource)
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return str(exc).splitlines()[0] + ": " + " ".join(str(exc).splitlines()[1:3])
        return None

    return check


def read_fhir(
    data: Path,
    *,
    diagnosis_system: str | Sequence[str] = "icd9,icd10,snomed",
    procedure_system: str | Sequence[str] = "icd9,icd10pcs,cpt,snomed",
    drug_system: str | Sequence[str] | None = None,
    drug_level: str = "rxnorm",
    resources: Path | None = None,
    drug_map: Path | None = None,
    validate: bool = False,
) -> RawCohort:
    """Read a FHIR export (file or folder) into the raw cohort every reader returns."""
    if drug_level not in DRUG_LEVELS:
        raise LeaderError(
            f"--drug-level must be one of {', '.join(DRUG_LEVELS)}, not {drug_level!r}"
        )
    default_drugs = "rxnorm" if drug_level == "rxnorm" else "atc,rxnorm"
    options = DocumentOptions(
        systems={
            "diagnosis": parse_systems(diagnosis_system, "--diagnosis-system"),
            "procedure": parse_systems(procedure_system, "--procedure-system"),
            "medication": parse_systems(drug_system or default_drugs, "--drug-system"),
        },
        drug_level=drug_level,
    )
    inputs = fhir_files(data)
    if drug_level == "atc3":
        source = drug_map or (resources / "rxcui2atc4.csv" if resources is not None else None)
        if source is None:
            raise LeaderError(
                "--drug-level atc3 maps RxNorm to ATC3: give --resources DIR "
                "(with rxcui2atc4.csv) or --drug-map FILE (columns rxcui, atc3)"
            )
        options.drug_map = read_drug_map(source)
        inputs.append(source)
    export = _Export(options, validate)
    for resource, full_url in iter_entries(data, READ_TYPES):
        export.add(resource, full_url)
    export.resolve_medications()
    return _cohort(export, data, inputs)


def _cohort(export: _Export, data: Path, inputs: list[Path]) -> RawCohort:
    counts: dict[str, Any] = dict(export.counts)
    funnel: list[dict[str, Any]] = []
    if not export.encounters:
        raise LeaderError(
            f"{data}: no usable Encounter resources (read: "
            f"{', '.join(f'{k}={v}' for k, v in sorted(export.counts.items())) or 'nothing'})"
        )
    encounters = pd.DataFrame(export.encounters, columns=["visit_id", "patient_ref", "time"])
    export.encounters = []  # the frame holds them now: free the rows before the next step
    encounters["patient_id"] = encounters["patient_ref"]
    if export.alias:
        encounters["patient_id"] = encounters["patient_ref"].map(lambda r: export.alias.get(r, r))
    counts["encounters_patient_resource_missing"] = int(
        (~encounters["patient_id"].isin(export.patients.keys())).sum()
    )
    counts["visit_times_converted_to_utc"] = export.zoned
    counts["visit_times_without_zone"] = export.unzoned
    times = pd.to_datetime(encounters["time"]).astype("datetime64[ns]")
    visits = pd.DataFrame(
        {
            "patient_id": encounters["patient_id"].astype("string"),
            "visit_id": encounters["visit_id"].astype("string"),
            "time": times,
        }
    )
    visits = dedupe_visits(visits, funnel, counts)
    codes = pd.DataFrame(export.codes, columns=["visit_id", "kind", "code", "type"])
    export.codes, export.strings = [], {}
    codes["kind"] = codes["kind"].astype("category")
    codes["type"] = codes["type"].astype("category")
    if export.alias:  # Bundle entries whose fullUrl is not their id
        codes["visit_id"] = codes["visit_id"].map(lambda r: export.alias.get(r, r))
    found = codes["visit_id"].isin(set(visits["visit_id"]))
    for kind, missing in codes.loc[~found, "type"].value_counts().items():
        if missing:
            counts[f"{str(kind).lower()}_resources_encounter_not_found"] = int(missing)
    codes = codes[found]
    parts = [
        code_rows(codes[codes["kind"] == kind], "visit_id", "code", kind, counts)
        for kind in ("diagnosis", "procedure", "medication")
    ]
    if export.other_types:
        counts["other_resources"] = dict(sorted(export.other_types.items()))
    if export.unknown_systems:
        counts["unknown_systems"] = dict(export.unknown_systems.most_common(20))
    if export.invalid:
        counts["invalid_examples"] = export.invalid
    return RawCohort(
        source="fhir",
        visits=visits,
        codes=pd.concat(parts, ignore_index=True),
        names=export.names,
        visit_profiles=_visit_profiles(visits, export.patients),
        funnel=funnel,
        counts=counts,
        inputs=inputs,
        time_kind=date_or_datetime(visits["time"]),
    )


def _visit_profiles(visits: pd.DataFrame, patients: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """gender, race, ethnicity and the age band at each visit (the first kept one is used)."""
    table = pd.DataFrame.from_dict(patients, orient="index")
    profile = pd.DataFrame({"visit_id": visits["visit_id"]})
    merged = visits[["patient_id", "time"]].join(table, on="patient_id") if len(table) else None
    for name in PROFILE_FIELDS:
        if merged is not None and name in merged.columns:
            profile[name] = merged[name].astype("string").fillna("unknown").values
        else:
            profile[name] = "unknown"
    if merged is not None and "birth" in merged.columns:
        birth = pd.to_datetime(merged["birth"], errors="coerce")
        profile["age_band"] = age_bands(years_between(birth, merged["time"])).values
    else:
        profile["age_band"] = "unknown"
    return profile
