"""The embedded synthetic demo cohort: ICU-like admissions with real ICD-9 and ATC3 codes.

Not real patients. A small generative model of an adult ICU population, written by hand so
the toolkit can be tried (and tested) without credentialed data:

- a profile per patient (gender, age band, insurance, language, marital status, ethnicity);
- chronic conditions drawn once per patient, more likely with age and per gender, correlated
  through a patient-level frailty; they are coded again at most later admissions;
- one admission reason per visit (sepsis, myocardial infarction, cardiac surgery, GI bleed...)
  that brings its diagnoses and procedures; diagnoses bring complications; background
  acute problems (hypokalemia, anemia...) and incidental codes add noise;
- medications from a base of common ward drugs, from each diagnosis and each procedure
  (condition -> drug associations), and a personal regimen per chronic condition that is
  chosen once and repeats at later admissions; some previous drugs carry over;
- interacting ATC3 pairs (``ddi``): when both would be prescribed, one is usually withheld,
  so interacting pairs are co-prescribed less often than chance.

Codes follow MIMIC-III conventions (ICD-9 without dots). Output is the generic event format
of DESIGN.md. Fully deterministic given ``seed``.

>>> cohort = generate(patients=30, seed=0)
>>> sorted(cohort.events["kind"].unique())
['diagnosis', 'medication', 'procedure']
>>> cohort.events.equals(generate(patients=30, seed=0).events)
True
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from leader.errors import LeaderError

EVENT_COLUMNS: tuple[str, ...] = ("patient_id", "visit_id", "visit_time", "kind", "code", "name")
PROFILE_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "gender",
    "age_band",
    "insurance",
    "language",
    "marital_status",
    "ethnicity",
)
DDI_COLUMNS: tuple[str, ...] = ("atc3_a", "atc3_b")
KIND_ORDER: tuple[str, ...] = ("diagnosis", "procedure", "medication")

# ---------------------------------------------------------------------------------------------
# The clinical tables: packaged YAML files (leader/data/synthetic_tables/), one per table, so a
# clinician can review them, and a change to them, as a diff. Real codes, names written here.
# ---------------------------------------------------------------------------------------------

TABLES = Path(__file__).resolve().parent / "synthetic_tables"


def _table(name: str) -> Any:
    import yaml

    path = TABLES / name
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise LeaderError(f"{path}: the synthetic cohort's table is unreadable ({exc})") from exc


@dataclass(frozen=True)
class Procedure:
    """An ICD-9 procedure and the drugs it brings (ATC3 -> probability per visit)."""

    code: str
    name: str
    drugs: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Condition:
    """An ICD-9 diagnosis and what it brings.

    Chronic conditions are drawn once per patient (``prevalence`` at age 60-69) and their
    ``drugs`` are regimen options chosen once per patient; acute ones occur per visit
    (``prevalence`` is the background rate per visit) and their ``drugs`` are drawn per visit.
    """

    code: str
    name: str
    chronic: bool
    prevalence: float  # patient-level (chronic) or per-visit background (acute) rate
    age: float = 0.0  # log-odds-like slope per decade of age, centred on 60-69
    male: float = 1.0  # male / female rate ratio (0 = women only, inf = men only)
    drugs: Mapping[str, float] = field(default_factory=dict)  # ATC3 -> probability
    procedures: Mapping[str, float] = field(default_factory=dict)  # ICD-9 proc -> probability
    complications: Mapping[str, float] = field(default_factory=dict)  # ICD-9 dx -> probability
    withhold: tuple[str, ...] = ()  # ATC3 classes contraindicated at a visit coding it


@dataclass(frozen=True)
class Reason:
    """An admission reason: the first diagnosis is the principal one."""

    name: str
    weight: float  # relative frequency at age 60-69
    age: float = 0.0  # slope per decade, as for conditions
    male: float = 1.0  # male / female ratio
    boost: tuple[str, ...] = ()  # chronic conditions that make this reason 3x more likely
    diagnoses: Mapping[str, float] = field(default_factory=dict)
    procedures: Mapping[str, float] = field(default_factory=dict)


def _load() -> tuple[Any, ...]:
    drugs = {str(k): str(v) for k, v in _table("drugs.yaml").items()}
    procedures = tuple(
        Procedure(str(p["code"]), p["name"], p.get("drugs", {})) for p in _table("procedures.yaml")
    )
    base = _table("base.yaml")
    conditions = tuple(
        Condition(
            str(c["code"]),
            c["name"],
            bool(c["chronic"]),
            float(c["prevalence"]),
            age=float(c.get("age", 0.0)),
            male=float(c.get("male", 1.0)),
            drugs=c.get("drugs", {}),
            procedures={str(k): v for k, v in c.get("procedures", {}).items()},
            complications={str(k): v for k, v in c.get("complications", {}).items()},
            withhold=tuple(c.get("withhold", ())),
        )
        for c in _table("conditions.yaml")
    )
    reasons = tuple(
        Reason(
            r["name"],
            float(r["weight"]),
            age=float(r.get("age", 0.0)),
            male=float(r.get("male", 1.0)),
            boost=tuple(str(b) for b in r.get("boost", ())),
            diagnoses={str(k): v for k, v in r.get("diagnoses", {}).items()},
            procedures={str(k): v for k, v in r.get("procedures", {}).items()},
        )
        for r in _table("reasons.yaml")
    )
    pairs = tuple((str(d["pair"][0]), str(d["pair"][1])) for d in _table("ddi.yaml"))
    return drugs, procedures, base, conditions, reasons, pairs


DRUGS, PROCEDURES, _BASE, CONDITIONS, REASONS, DDI_PAIRS = _load()
# Procedures coded and drugs given at any admission, whatever the reason (probability).
BASE_PROCEDURES: dict[str, float] = {str(k): v for k, v in _BASE["procedures"].items()}
BASE_DRUGS: dict[str, float] = dict(_BASE["drugs"])

DDI_AVOIDANCE = 0.75  # probability that the second drug of an interacting pair is withheld
CHRONIC_CODED = 0.9  # a chronic condition of the patient is coded at an admission
REGIMEN_GIVEN = 0.85  # a chronic regimen drug is given at an admission where it is coded
REGIMEN_UNCODED = 0.6  # ... and where the condition is not coded at that admission
CARRY_OVER = 0.2  # any other drug of the previous admission is given again
FRAILTY_MEAN = 0.2  # patient-level log-multiplier on chronic prevalences: mean ...
FRAILTY_SD = 0.5  # ... and spread (shared frailty makes comorbidities correlate)
# Visits per patient: 1..6 (about 65% first-time patients, as in MIMIC-III).
VISIT_COUNTS: tuple[float, ...] = (0.65, 0.18, 0.08, 0.045, 0.027, 0.018)
AGE_BANDS: tuple[tuple[str, int, float], ...] = (  # band, decade index, share
    ("18-29", 2, 0.06),
    ("30-39", 3, 0.07),
    ("40-49", 4, 0.12),
    ("50-59", 5, 0.18),
    ("60-69", 6, 0.21),
    ("70-79", 7, 0.19),
    ("80-89", 8, 0.13),
    ("90+", 9, 0.04),
)


# ---------------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------------


@dataclass
class SyntheticCohort:
    """The generated cohort, in the generic event format (DESIGN.md)."""

    events: pd.DataFrame  # patient_id, visit_id, visit_time, kind, code, name
    profiles: pd.DataFrame  # patient_id, gender, age_band, insurance, language, ...
    ddi: pd.DataFrame  # atc3_a, atc3_b (pairs whose drugs both occur in events)
    seed: int  # the seed it was generated with
    # visit_id, code, probability: each admission's true drug probabilities (estimated with
    # ``oracle_draws`` re-draws), or None when not asked for
    oracle: pd.DataFrame | None = None


@dataclass
class _Patient:
    """Per-patient state carried across visits."""

    chronic: list[str]  # chronic condition codes, drawn once
    background: np.ndarray  # (acute conditions,) per-visit background rates
    reason_cdf: np.ndarray  # (reasons,) cumulative admission-reason probabilities
    regimen: dict[str, list[str]] = field(default_factory=dict)  # chronic code -> drugs
    previous_drugs: list[str] = field(default_factory=list)


_CONDITION = {c.code: c for c in CONDITIONS}
_PROCEDURE = {p.code: p for p in PROCEDURES}
_CHRONIC = [c for c in CONDITIONS if c.chronic]
_ACUTE = [c for c in CONDITIONS if not c.chronic and c.prevalence > 0]
_DDI_SECOND: dict[str, list[str]] = {}
for _first, _second in DDI_PAIRS:
    _DDI_SECOND.setdefault(_first, []).append(_second)


def _rate(base: float, age_slope: float, male_ratio: float, decade: int, male: bool) -> float:
    """Rate adjusted for age (per decade from 60-69) and gender (ratio split both ways)."""
    if male_ratio == 0.0 or math.isinf(male_ratio):
        sex = 2.0 if (male_ratio > 0) == male else 0.0  # one gender only
    else:
        sex = math.sqrt(male_ratio) if male else 1.0 / math.sqrt(male_ratio)
    return min(0.95, base * math.exp(age_slope * (decade - 6)) * sex)


@functools.cache
def _rate_table(decade: int, male: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rates for one age band and gender: chronic prevalences, acute background, reasons."""
    chronic = np.array([_rate(c.prevalence, c.age, c.male, decade, male) for c in _CHRONIC])
    acute = np.array([_rate(c.prevalence, c.age, c.male, decade, male) for c in _ACUTE])
    reasons = np.array([_rate(r.weight / 100.0, r.age, r.male, decade, male) for r in REASONS])
    for table in (chronic, acute, reasons):
        table.setflags(write=False)
    return chronic, acute, reasons


def _draw(rng: np.random.Generator, options: Mapping[str, float]) -> list[str]:
    """Each option independently with its probability, in table order."""
    if not options:
        return []
    draws = rng.random(len(options))
    return [code for (code, p), u in zip(options.items(), draws, strict=True) if u < p]


_LANGUAGES = ("ENGL", "SPAN", "PORT", "RUSS", "CANT", "HAIT", "VIET", None)
_LANGUAGE_CDF = (0.6, 0.64, 0.66, 0.68, 0.69, 0.7, 0.71)  # about 29% missing, as in MIMIC-III
_ETHNICITIES = (
    "WHITE",
    "BLACK/AFRICAN AMERICAN",
    "HISPANIC OR LATINO",
    "ASIAN",
    "OTHER",
    "UNABLE TO OBTAIN",
    "UNKNOWN/NOT SPECIFIED",
)
_ETHNICITY_CDF = (0.7, 0.8, 0.84, 0.87, 0.89, 0.91)
_AGE_CDF = tuple(np.cumsum([share for _, _, share in AGE_BANDS])[:-1])


def _profile(
    patient_id: int, uniform: np.ndarray, frailty_z: float, chronic_uniform: np.ndarray
) -> tuple[dict[str, Any], _Patient]:
    """One patient from pre-drawn randomness: ``uniform`` (7,), ``chronic_uniform`` (chronic,)."""
    band, decade, _ = AGE_BANDS[bisect.bisect(_AGE_CDF, uniform[0])]
    male = bool(uniform[1] < 0.56)
    if decade >= 7:
        insurance = (
            "Medicare" if uniform[2] < 0.82 else "Private" if uniform[2] < 0.95 else "Medicaid"
        )
    else:
        insurance = ("Private", "Medicaid", "Medicare", "Government", "Self Pay")[
            bisect.bisect((0.52, 0.72, 0.9, 0.97), uniform[2])
        ]
    if decade <= 3:
        marital = ("SINGLE", "MARRIED", None)[bisect.bisect((0.6, 0.85), uniform[4])]
    else:
        widowed = 0.05 + 0.06 * max(0, decade - 6)
        cuts = (0.5, 0.68, 0.68 + widowed, 0.76 + widowed, 0.78 + widowed)
        marital = ("MARRIED", "SINGLE", "WIDOWED", "DIVORCED", "SEPARATED", None)[
            bisect.bisect(cuts, uniform[4])
        ]
    profile = {
        "patient_id": patient_id,
        "gender": "M" if male else "F",
        "age_band": band,
        "insurance": insurance,
        "language": _LANGUAGES[bisect.bisect(_LANGUAGE_CDF, uniform[3])],
        "marital_status": marital,
        "ethnicity": _ETHNICITIES[bisect.bisect(_ETHNICITY_CDF, uniform[5])],
    }
    chronic_rates, background, reason_weights = _rate_table(decade, male)
    frailty = math.exp(FRAILTY_MEAN + FRAILTY_SD * frailty_z)
    has = chronic_uniform < np.minimum(0.95, chronic_rates * frailty)
    chronic = [c.code for c, h in zip(_CHRONIC, has, strict=True) if h]
    boost = [3.0 if any(code in chronic for code in r.boost) else 1.0 for r in REASONS]
    weights = reason_weights * np.array(boost)
    reason_cdf = np.cumsum(weights / weights.sum())
    return profile, _Patient(chronic=chronic, background=background, reason_cdf=reason_cdf)


def _reason(rng: np.random.Generator, patient: _Patient) -> Reason:
    index = int(np.searchsorted(patient.reason_cdf, rng.random() * patient.reason_cdf[-1]))
    return REASONS[min(index, len(REASONS) - 1)]


def _visit(rng: np.random.Generator, patient: _Patient) -> tuple[list[str], list[str], list[str]]:
    """One admission: (diagnoses, procedures, medications), codes in first-seen order."""
    diagnoses, procedures = _conditions(rng, patient)
    return diagnoses, procedures, _medications(rng, patient, diagnoses, procedures)


def _conditions(rng: np.random.Generator, patient: _Patient) -> tuple[list[str], list[str]]:
    """The admission's diagnoses and procedures."""
    reason = _reason(rng, patient)
    # The principal diagnosis: the reason's first drawn code, else its first listed one.
    diagnoses: dict[str, None] = dict.fromkeys(
        _draw(rng, reason.diagnoses) or [next(iter(reason.diagnoses))]
    )
    coded = rng.random(len(patient.chronic)) < CHRONIC_CODED
    diagnoses.update(dict.fromkeys(c for c, k in zip(patient.chronic, coded, strict=True) if k))
    hits = rng.random(len(_ACUTE)) < patient.background
    diagnoses.update(dict.fromkeys(c.code for c, h in zip(_ACUTE, hits, strict=True) if h))
    for code in list(diagnoses):  # one round of complications
        diagnoses.update(dict.fromkeys(_draw(rng, _CONDITION[code].complications)))

    procedures: dict[str, None] = dict.fromkeys(_draw(rng, reason.procedures))
    for code in diagnoses:
        procedures.update(dict.fromkeys(_draw(rng, _CONDITION[code].procedures)))
    procedures.update(dict.fromkeys(_draw(rng, BASE_PROCEDURES)))
    if not procedures:  # every ICU stay has at least a line placed
        procedures["3893"] = None
    return list(diagnoses), list(procedures)


def _medications(
    rng: np.random.Generator, patient: _Patient, diagnoses: list[str], procedures: list[str]
) -> list[str]:
    """The admission's drugs given its codes and the patient's state (updated)."""
    drugs: dict[str, None] = dict.fromkeys(_draw(rng, BASE_DRUGS))
    for code in patient.chronic:  # personal regimen, chosen once, repeated
        if code not in patient.regimen:
            patient.regimen[code] = _draw(rng, _CONDITION[code].drugs)
        given = REGIMEN_GIVEN if code in diagnoses else REGIMEN_UNCODED
        regimen = patient.regimen[code]
        kept = rng.random(len(regimen)) < given
        drugs.update(dict.fromkeys(d for d, k in zip(regimen, kept, strict=True) if k))
    for code in diagnoses:
        if not _CONDITION[code].chronic:
            drugs.update(dict.fromkeys(_draw(rng, _CONDITION[code].drugs)))
    for code in procedures:
        drugs.update(dict.fromkeys(_draw(rng, _PROCEDURE[code].drugs)))
    carried = rng.random(len(patient.previous_drugs)) < CARRY_OVER
    drugs.update(
        dict.fromkeys(d for d, c in zip(patient.previous_drugs, carried, strict=True) if c)
    )
    for first in list(drugs):  # interacting pairs: usually withhold the second drug
        for second in _DDI_SECOND.get(first, ()):
            if first in drugs and second in drugs and rng.random() < DDI_AVOIDANCE:
                del drugs[second]
    for code in diagnoses:  # contraindications at this admission
        for drug in _CONDITION[code].withhold:
            drugs.pop(drug, None)
    if not drugs:
        drugs["N02B"] = None
    patient.previous_drugs = list(drugs)
    return list(drugs)


def _oracle(
    patient: _Patient,
    previous: list[str],
    diagnoses: list[str],
    procedures: list[str],
    rng: np.random.Generator,
    draws: int,
) -> dict[str, float]:
    """Each drug's probability at this admission given everything the generator knows (the
    codes, the patient's regimens, the previous drugs): the share of ``draws`` re-draws of
    the medication step that give it. The ceiling no model of the data can pass."""
    counts: dict[str, int] = {}
    for _ in range(draws):
        state = _Patient(
            patient.chronic, patient.background, patient.reason_cdf, dict(patient.regimen), previous
        )
        for drug in _medications(rng, state, diagnoses, procedures):
            counts[drug] = counts.get(drug, 0) + 1
    return {drug: n / draws for drug, n in sorted(counts.items())}


def generate(patients: int = 2000, seed: int = 0, oracle_draws: int = 0) -> SyntheticCohort:
    """Generate ``patients`` synthetic patients; the same seed gives the same cohort.

    ``oracle_draws`` > 0 also estimates every admission's true drug probabilities
    (:func:`_oracle`, from a random stream of its own: the cohort is the same either way).
    """
    if patients < 1:
        raise LeaderError(f"--patients must be at least 1 (got {patients})")
    if seed < 0:
        raise LeaderError(f"--seed must be a non-negative integer (got {seed})")
    rng = np.random.default_rng(seed)
    names = {
        "diagnosis": {c.code: c.name for c in CONDITIONS},
        "procedure": {p.code: p.name for p in PROCEDURES},
        "medication": DRUGS,
    }
    columns: dict[str, list[Any]] = {name: [] for name in EVENT_COLUMNS}
    profiles: list[dict[str, Any]] = []
    visit_counts = rng.choice(len(VISIT_COUNTS), size=patients, p=VISIT_COUNTS) + 1
    uniforms = rng.random((patients, 7))  # (patients, 7): profile fields, first admission
    frailty_z = rng.standard_normal(patients)  # (patients,)
    chronic_uniforms = rng.random((patients, len(_CHRONIC)))  # (patients, chronic)
    epoch = datetime(2001, 1, 1)
    visit_id = 200000
    oracle: dict[str, list[Any]] = {"visit_id": [], "code": [], "probability": []}
    for index in range(patients):
        patient_id = 10000 + index
        profile, patient = _profile(
            patient_id, uniforms[index], float(frailty_z[index]), chronic_uniforms[index]
        )
        profiles.append(profile)
        time = epoch + timedelta(days=float(uniforms[index, 6] * 4200))
        for _ in range(int(visit_counts[index])):
            visit_id += 1
            stamp = time.replace(microsecond=0).strftime("%Y-%m-%d %H:%M:%S")
            previous = list(patient.previous_drugs)
            visit = _visit(rng, patient)
            if oracle_draws:
                own = np.random.default_rng([seed, visit_id])
                truth = _oracle(patient, previous, visit[0], visit[1], own, oracle_draws)
                oracle["visit_id"].extend([visit_id] * len(truth))
                oracle["code"].extend(truth)
                oracle["probability"].extend(truth.values())
            for kind, codes in zip(KIND_ORDER, visit, strict=True):
                columns["patient_id"].extend([patient_id] * len(codes))
                columns["visit_id"].extend([visit_id] * len(codes))
                columns["visit_time"].extend([stamp] * len(codes))
                columns["kind"].extend([kind] * len(codes))
                columns["code"].extend(codes)
                columns["name"].extend([names[kind][code] for code in codes])
            stay, gap = rng.uniform(1, 14), 3 + rng.exponential(240)
            time += timedelta(days=float(stay + gap))
    events = pd.DataFrame(columns)
    drugs_used = set(events.loc[events["kind"] == "medication", "code"])
    pairs = sorted(
        tuple(sorted(pair)) for pair in DDI_PAIRS if pair[0] in drugs_used and pair[1] in drugs_used
    )
    ddi = pd.DataFrame(pairs, columns=list(DDI_COLUMNS))
    return SyntheticCohort(
        events=events,
        profiles=pd.DataFrame(profiles, columns=list(PROFILE_COLUMNS)),
        ddi=ddi,
        seed=seed,
        oracle=pd.DataFrame(oracle) if oracle_draws else None,
    )


def summary(cohort: SyntheticCohort) -> dict[str, float | int]:
    """Cohort statistics: patients, visits, first-time share, mean codes per visit per kind."""
    events = cohort.events
    visits_per_patient = events.groupby("patient_id")["visit_id"].nunique()
    per_visit = events.groupby(["visit_id", "kind"]).size().unstack(fill_value=0)
    visits = int(per_visit.shape[0])
    return {
        "patients": int(visits_per_patient.size),
        "visits": visits,
        "single_visit_patients": int((visits_per_patient == 1).sum()),
        "multi_visit_patients": int((visits_per_patient > 1).sum()),
        "diagnosis_codes": int(events.loc[events["kind"] == "diagnosis", "code"].nunique()),
        "procedure_codes": int(events.loc[events["kind"] == "procedure", "code"].nunique()),
        "medication_codes": int(events.loc[events["kind"] == "medication", "code"].nunique()),
        "mean_diagnoses_per_visit": float(per_visit["diagnosis"].mean()),
        "mean_procedures_per_visit": float(per_visit["procedure"].mean()),
        "mean_medications_per_visit": float(per_visit["medication"].mean()),
        "ddi_pairs": int(len(cohort.ddi)),
        "events": int(len(events)),
    }


def _readme(cohort: SyntheticCohort) -> str:
    stats = summary(cohort)
    return (
        "SYNTHETIC DATA - NOT REAL PATIENTS. This cohort was generated by `leader synth "
        f"--patients {stats['patients']} --seed {cohort.seed}` (leader.data.synthetic), a "
        "hand-written generative model of adult ICU admissions: each patient gets a profile "
        "(gender, age band, insurance, language, marital status, ethnicity), chronic "
        "conditions that depend on age and gender and persist across admissions, and 1-6 "
        "admissions, each with an admission reason that brings diagnoses, complications and "
        "procedures; medications come from common ward drugs, condition -> drug and "
        "procedure -> drug associations and a personal regimen per chronic condition that "
        "repeats at later admissions; interacting drug pairs (ddi.csv) are usually not "
        "co-prescribed. Codes are real ICD-9 (diagnoses, procedures; MIMIC-III style, "
        "no dots) and ATC level 3 (medications) with their ICD-9-CM and ATC titles; dates are "
        "synthetic. Any resemblance to a real person is chance. "
        f"{stats['patients']} patients, {stats['visits']} admissions "
        f"({stats['single_visit_patients']} first-time patients), "
        f"{stats['mean_medications_per_visit']:.1f} drug classes per admission. Files: "
        "events.csv (patient_id, visit_id, visit_time, kind, code, name; one row per code "
        "occurrence), profiles.csv, ddi.csv (atc3_a, atc3_b). The same seed gives the same "
        "bytes.\n"
    )


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="\n")
    tmp.replace(path)


def write(cohort: SyntheticCohort, out_dir: str | Path) -> Path:
    """Write events.csv, profiles.csv, ddi.csv and README.txt (and oracle.csv when the
    cohort has its true probabilities) into ``out_dir``."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise LeaderError(f"--out {out}: exists and is not a directory; give a folder path")
    out.mkdir(parents=True, exist_ok=True)
    _write_text(out / "events.csv", cohort.events.to_csv(index=False, lineterminator="\n"))
    _write_text(out / "profiles.csv", cohort.profiles.to_csv(index=False, lineterminator="\n"))
    _write_text(out / "ddi.csv", cohort.ddi.to_csv(index=False, lineterminator="\n"))
    _write_text(out / "README.txt", _readme(cohort))
    if cohort.oracle is not None:
        text = cohort.oracle.to_csv(index=False, lineterminator="\n", float_format="%.4f")
        _write_text(out / "oracle.csv", text)
    return out


def oracle_probabilities(
    path: str | Path, visit_ids: list[str], medication_codes: list[str]
) -> np.ndarray:
    """The oracle's probabilities (visits, drugs) from ``oracle.csv``, rows in ``visit_ids``
    order, columns in ``medication_codes`` order (0 for a drug it never gave)."""
    source = Path(path)
    if not source.is_file():
        raise LeaderError(f"{source}: no oracle file; generate the cohort with oracle_draws > 0")
    table = pd.read_csv(source, dtype={"visit_id": str, "code": str})
    row = {visit: i for i, visit in enumerate(visit_ids)}
    col = {code: j for j, code in enumerate(medication_codes)}
    kept = table[table["visit_id"].isin(row) & table["code"].isin(col)]
    missing = set(visit_ids) - set(table["visit_id"])
    if missing:
        raise LeaderError(f"{source}: no row for visit(s) {sorted(missing)[:3]}: another cohort?")
    out = np.zeros((len(visit_ids), len(medication_codes)), dtype=np.float32)
    out[kept["visit_id"].map(row).to_numpy(), kept["code"].map(col).to_numpy()] = kept[
        "probability"
    ].to_numpy()
    return out


__all__ = ["SyntheticCohort", "generate", "oracle_probabilities", "summary", "write"]
