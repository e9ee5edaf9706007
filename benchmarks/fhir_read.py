"""FHIR export reading speed and memory: ``leader prepare fhir``'s reader on a synthetic export.

Writes a Synthea-like FHIR R4 export of about ``--size-mb`` megabytes (per-patient
transaction Bundles as Synthea writes them, or Bulk Data NDJSON, one file per resource
type, optionally gzipped), then reads it with :func:`leader.data.sources.fhir.read_fhir`
in a fresh process and prints resources/s and the peak RSS (with the RSS after imports,
the floor). Resources have Synthea's shapes and proportions: Observations, Claims and
ExplanationOfBenefits (most of the bytes) beside the Encounters, Conditions, Procedures
and MedicationRequests that are read; ``urn:uuid:`` references as Synthea writes.

    python benchmarks/fhir_read.py --size-mb 1000 --format ndjson.gz --out /tmp/fhir1g
    python benchmarks/fhir_read.py --size-mb 50 --format bundles --validate
    python benchmarks/fhir_read.py --service     # POST /v1/recommend's FHIR conversion
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any, TextIO

CONDITIONS = [  # SNOMED CT, display, ICD-10-CM (some real exports carry both)
    ("44054006", "Diabetes mellitus type 2 (disorder)", "E11.9"),
    ("59621000", "Essential hypertension (disorder)", "I10"),
    ("55822004", "Hyperlipidemia (disorder)", "E78.5"),
    ("15777000", "Prediabetes (finding)", "R73.03"),
    ("195662009", "Acute viral pharyngitis (disorder)", "J02.9"),
    ("10509002", "Acute bronchitis (disorder)", "J20.9"),
    ("444814009", "Viral sinusitis (disorder)", "J01.90"),
    ("49436004", "Atrial fibrillation (disorder)", "I48.91"),
    ("53741008", "Coronary heart disease (disorder)", "I25.10"),
    ("271737000", "Anemia (disorder)", "D64.9"),
    ("233678006", "Childhood asthma (disorder)", "J45.909"),
    ("87433001", "Pulmonary emphysema (disorder)", "J43.9"),
    ("65363002", "Otitis media (disorder)", "H66.90"),
    ("22298006", "Myocardial infarction (disorder)", "I21.9"),
    ("230690007", "Cerebrovascular accident (disorder)", "I63.9"),
]
PROCEDURES = [
    ("430193006", "Medication Reconciliation (procedure)"),
    ("710824005", "Assessment of health and social care needs (procedure)"),
    ("171207006", "Depression screening (procedure)"),
    ("73761001", "Colonoscopy (procedure)"),
    ("117015009", "Throat culture (procedure)"),
    ("76601001", "Intramuscular injection (procedure)"),
    ("23426006", "Measurement of respiratory function (procedure)"),
    ("410620009", "Well child visit (procedure)"),
]
DRUGS = [  # RxNorm clinical drugs Synthea prescribes
    ("860975", "24 HR Metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("197361", "amlodipine 5 MG Oral Tablet"),
    ("834061", "Penicillin V Potassium 250 MG Oral Tablet"),
    ("313782", "Acetaminophen 325 MG Oral Tablet"),
    ("849574", "Naproxen sodium 220 MG Oral Tablet"),
    ("562251", "Amoxicillin 250 MG / Clavulanate 125 MG Oral Tablet"),
    ("617314", "atorvastatin 10 MG Oral Tablet"),
    ("312961", "Simvastatin 20 MG Oral Tablet"),
    ("866924", "Metoprolol Tartrate 25 MG Oral Tablet"),
    ("745679", "200 ACTUAT Albuterol 0.09 MG/ACTUAT Metered Dose Inhaler"),
    ("309362", "Clopidogrel 75 MG Oral Tablet"),
    ("1014676", "cetirizine hydrochloride 5 MG Oral Tablet"),
    ("310798", "Hydrochlorothiazide 25 MG Oral Tablet"),
]
OBSERVATIONS = [
    ("8302-2", "Body Height", "cm", 150, 195),
    ("29463-7", "Body Weight", "kg", 50, 120),
    ("39156-5", "Body mass index (BMI) [Ratio]", "kg/m2", 18, 40),
    ("8867-4", "Heart rate", "/min", 55, 100),
    ("9279-1", "Respiratory rate", "/min", 12, 20),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 180),
    ("2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 150, 260),
]
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
LOINC = "http://loinc.org"
RACES = [("2106-3", "White"), ("2054-5", "Black or African American"), ("2028-9", "Asian")]


def _ref(full_url: str) -> dict[str, str]:
    return {"reference": full_url}


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _when(rng: random.Random, year: int) -> str:
    day = f"{year}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    return f"{day}T{rng.randint(7, 18):02d}:{rng.randint(0, 59):02d}:00-05:00"


def patient_resources(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """One patient's ``(fullUrl, resource)`` pairs, as a Synthea Bundle holds them."""
    pid = str(uuid.UUID(int=rng.getrandbits(128)))
    patient_url = f"urn:uuid:{pid}"
    race = rng.choice(RACES)
    born = rng.randint(1930, 2005)
    out: list[tuple[str, dict[str, Any]]] = [
        (
            patient_url,
            {
                "resourceType": "Patient",
                "id": pid,
                "meta": {
                    "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]
                },
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race",
                        "extension": [
                            {
                                "url": "ombCategory",
                                "valueCoding": {
                                    "system": "urn:oid:2.16.840.1.113883.6.238",
                                    "code": race[0],
                                    "display": race[1],
                                },
                            },
                            {"url": "text", "valueString": race[1]},
                        ],
                    },
                    {
                        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity",
                        "extension": [
                            {
                                "url": "ombCategory",
                                "valueCoding": {
                                    "system": "urn:oid:2.16.840.1.113883.6.238",
                                    "code": "2186-5",
                                    "display": "Not Hispanic or Latino",
                                },
                            },
                            {"url": "text", "valueString": "Not Hispanic or Latino"},
                        ],
                    },
                    {
                        "url": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-birthsex",
                        "valueCode": rng.choice("MF"),
                    },
                ],
                "identifier": [
                    {"system": "https://github.com/synthetichealth/synthea", "value": pid}
                ],
                "name": [
                    {
                        "use": "official",
                        "family": f"Family{rng.randint(1, 999)}",
                        "given": [f"Given{rng.randint(1, 999)}"],
                    }
                ],
                "telecom": [{"system": "phone", "value": "555-555-5555", "use": "home"}],
                "gender": rng.choice(["male", "female"]),
                "birthDate": f"{born}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
                "address": [
                    {"line": ["1 Main St"], "city": "Boston", "state": "MA", "country": "US"}
                ],
                "maritalStatus": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                            "code": "M",
                        }
                    ]
                },
                "communication": [
                    {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en-US"}]}}
                ],
            },
        )
    ]
    for n in range(rng.randint(3, 40)):
        year = min(2024, born + 18 + n)
        start = _when(rng, year)
        eid = str(uuid.UUID(int=rng.getrandbits(128)))
        enc_url = f"urn:uuid:{eid}"
        out.append(
            (
                enc_url,
                {
                    "resourceType": "Encounter",
                    "id": eid,
                    "status": "finished",
                    "class": {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                        "code": "AMB",
                    },
                    "type": [_concept(SNOMED, "185349003", "Encounter for check up (procedure)")],
                    "subject": _ref(patient_url),
                    "participant": [
                        {
                            "individual": {
                                "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999912345"
                            }
                        }
                    ],
                    "period": {"start": start, "end": start},
                    "serviceProvider": {
                        "reference": "Organization?identifier=https://github.com/synthetichealth/synthea|abc"
                    },
                },
            )
        )
        for _ in range(rng.randint(0, 2)):
            snomed, display, icd10 = rng.choice(CONDITIONS)
            codings = [{"system": SNOMED, "code": snomed, "display": display}]
            if rng.random() < 0.5:
                codings.append({"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": icd10})
            cid = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(
                (
                    f"urn:uuid:{cid}",
                    {
                        "resourceType": "Condition",
                        "id": cid,
                        "clinicalStatus": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                                    "code": "active",
                                }
                            ]
                        },
                        "verificationStatus": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                                    "code": "confirmed",
                                }
                            ]
                        },
                        "category": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                                        "code": "encounter-diagnosis",
                                    }
                                ]
                            }
                        ],
                        "code": {"coding": codings, "text": display},
                        "subject": _ref(patient_url),
                        "encounter": _ref(enc_url),
                        "onsetDateTime": start,
                        "recordedDate": start,
                    },
                )
            )
        for _ in range(rng.randint(0, 3)):
            code, display = rng.choice(PROCEDURES)
            xid = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(
                (
                    f"urn:uuid:{xid}",
                    {
                        "resourceType": "Procedure",
                        "id": xid,
                        "status": "completed",
                        "code": _concept(SNOMED, code, display),
                        "subject": _ref(patient_url),
                        "encounter": _ref(enc_url),
                        "performedPeriod": {"start": start, "end": start},
                    },
                )
            )
        for _ in range(rng.randint(0, 3)):
            code, display = rng.choice(DRUGS)
            mid = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(
                (
                    f"urn:uuid:{mid}",
                    {
                        "resourceType": "MedicationRequest",
                        "id": mid,
                        "status": rng.choice(["active", "stopped", "completed"]),
                        "intent": "order",
                        "medicationCodeableConcept": _concept(RXNORM, code, display),
                        "subject": _ref(patient_url),
                        "encounter": _ref(enc_url),
                        "authoredOn": start,
                        "requester": {
                            "reference": "Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|9999912345"
                        },
                        "dosageInstruction": [
                            {
                                "sequence": 1,
                                "timing": {
                                    "repeat": {"frequency": 1, "period": 1.0, "periodUnit": "d"}
                                },
                                "asNeededBoolean": False,
                                "doseAndRate": [{"doseQuantity": {"value": 1.0}}],
                            }
                        ],
                    },
                )
            )
        for _ in range(rng.randint(3, 10)):
            code, display, unit, low, high = rng.choice(OBSERVATIONS)
            oid = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(
                (
                    f"urn:uuid:{oid}",
                    {
                        "resourceType": "Observation",
                        "id": oid,
                        "status": "final",
                        "category": [
                            {
                                "coding": [
                                    {
                                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                        "code": "vital-signs",
                                    }
                                ]
                            }
                        ],
                        "code": _concept(LOINC, code, display),
                        "subject": _ref(patient_url),
                        "encounter": _ref(enc_url),
                        "effectiveDateTime": start,
                        "issued": start[:19] + ".000-05:00",
                        "valueQuantity": {
                            "value": round(rng.uniform(low, high), 1),
                            "unit": unit,
                            "system": "http://unitsofmeasure.org",
                            "code": unit,
                        },
                    },
                )
            )
        for kind in ("Claim", "ExplanationOfBenefit"):
            bid = str(uuid.UUID(int=rng.getrandbits(128)))
            out.append(
                (
                    f"urn:uuid:{bid}",
                    {
                        "resourceType": kind,
                        "id": bid,
                        "status": "active",
                        "type": {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/claim-type",
                                    "code": "professional",
                                }
                            ]
                        },
                        "use": "claim",
                        "patient": _ref(patient_url),
                        "billablePeriod": {"start": start, "end": start},
                        "created": start,
                        "provider": {
                            "reference": "Organization?identifier=https://github.com/synthetichealth/synthea|abc"
                        },
                        "insurance": [
                            {"sequence": 1, "focal": True, "coverage": {"display": "Medicare"}}
                        ],
                        "item": [
                            {
                                "sequence": i + 1,
                                "encounter": [_ref(enc_url)],
                                "productOrService": _concept(
                                    SNOMED, "185349003", "Encounter for check up (procedure)"
                                ),
                                "net": {"value": 129.16, "currency": "USD"},
                            }
                            for i in range(rng.randint(1, 4))
                        ],
                        "total": {"value": 129.16, "currency": "USD"},
                    },
                )
            )
    return out


def write_export(out: Path, size_mb: float, layout: str, seed: int) -> tuple[int, int]:
    """Write until the export holds ``size_mb`` MB; returns (patients, resources)."""
    rng = random.Random(seed)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    target = size_mb * 1_000_000
    written = patients = resources = 0
    files: dict[str, TextIO] = {}
    try:
        while written < target:
            pairs = patient_resources(rng)
            patients += 1
            resources += len(pairs)
            if layout == "bundles":
                bundle = {
                    "resourceType": "Bundle",
                    "type": "transaction",
                    "entry": [
                        {
                            "fullUrl": url,
                            "resource": r,
                            "request": {"method": "POST", "url": r["resourceType"]},
                        }
                        for url, r in pairs
                    ],
                }
                text = json.dumps(bundle)
                (out / f"Patient_{patients:07d}_{pairs[0][1]['id']}.json").write_text(
                    text, encoding="utf-8"
                )
                written += len(text)
                continue
            for _, r in pairs:
                kind = r["resourceType"]
                if kind not in files:
                    name = out / f"{kind}.ndjson{'.gz' if layout == 'ndjson.gz' else ''}"
                    files[kind] = (
                        gzip.open(name, "wt", encoding="utf-8", compresslevel=1)
                        if layout == "ndjson.gz"
                        else name.open("w", encoding="utf-8")
                    )
                line = json.dumps(r)
                files[kind].write(line + "\n")
                written += len(line) + 1
    finally:
        for handle in files.values():
            handle.close()
    return patients, resources


def read(path: Path, validate: bool) -> None:
    """In a fresh process: read the export, print the figures as one JSON line."""
    from leader.data.sources.fhir import read_fhir

    floor = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    raw = read_fhir(path, validate=validate)
    seconds = time.perf_counter() - start
    counted = sum(
        v for k, v in raw.counts.items() if k.endswith("_resources") and isinstance(v, int)
    )
    counted += sum(raw.counts.get("other_resources", {}).values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "resources": counted,
                "seconds": round(seconds, 2),
                "resources_per_s": round(counted / seconds),
                "peak_rss_mib": round(peak),
                "rss_after_imports_mib": round(floor),
                "visits": len(raw.visits),
                "code_rows": len(raw.codes),
            }
        )
    )


def convert_one(seed: int, rounds: int = 30) -> None:
    """The service's cost: one large patient Bundle -> the JSON patient (FhirInput.convert)."""
    import statistics

    from leader.fhir import FhirInput
    from leader.recommend import loads

    rng = random.Random(seed)
    pairs = max((patient_resources(rng) for _ in range(20)), key=len)
    entries = [{"fullUrl": url, "resource": r} for url, r in pairs]
    body = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
    known = {"diagnosis": {"snomed:44054006"}, "procedure": set(), "medication": {"A10B"}}
    converter = FhirInput(known, {"860975": "A10B"})
    parse, total = [], []
    for _ in range(rounds):
        start = time.perf_counter()
        document = loads(body)
        parsed = time.perf_counter()
        patient, _ = converter.convert(document)
        parse.append(parsed - start)
        total.append(time.perf_counter() - start)
    print(
        f"one Bundle of {len(pairs)} resources ({len(body) // 1000} kB, "
        f"{len(patient['visits'])} visits): parse {statistics.median(parse) * 1000:.1f} ms, "
        f"parse + convert {statistics.median(total) * 1000:.1f} ms (medians of {rounds})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100, help="export size to write (MB)")
    parser.add_argument("--format", choices=["bundles", "ndjson", "ndjson.gz"], default="ndjson")
    parser.add_argument("--out", type=Path, default=Path("/tmp/leader-fhir-bench"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validate", action="store_true", help="also check with fhir.resources")
    parser.add_argument("--keep", action="store_true", help="keep the export afterwards")
    parser.add_argument("--read-only", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--service", action="store_true", help="time one Bundle -> JSON patient instead"
    )
    args = parser.parse_args()
    if args.service:
        convert_one(args.seed)
        return
    if args.read_only is not None:
        read(args.read_only, args.validate)
        return
    start = time.perf_counter()
    patients, resources = write_export(args.out, args.size_mb, args.format, args.seed)
    on_disk = sum(p.stat().st_size for p in args.out.iterdir()) / 1e6
    print(
        f"wrote {patients} patients, {resources} resources, {on_disk:.0f} MB on disk "
        f"({args.format}) in {time.perf_counter() - start:.0f} s",
        flush=True,
    )
    command = [sys.executable, __file__, "--read-only", str(args.out)]
    if args.validate:
        command.append("--validate")
    try:
        figures = json.loads(
            subprocess.run(command, check=True, capture_output=True, text=True).stdout
        )
    finally:
        if not args.keep:
            shutil.rmtree(args.out, ignore_errors=True)
    print(
        f"read {figures['resources']} resources in {figures['seconds']} s: "
        f"{figures['resources_per_s']} resources/s; peak RSS {figures['peak_rss_mib']} MiB "
        f"(after imports: {figures['rss_after_imports_mib']} MiB); "
        f"{figures['visits']} visits, {figures['code_rows']} code rows"
    )


if __name__ == "__main__":
    main()
