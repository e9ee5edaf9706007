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
# Vocabulary: real codes, names written for this module.
# ---------------------------------------------------------------------------------------------

DRUGS: dict[str, str] = {
    "A02B": "Drugs for peptic ulcer and gastro-oesophageal reflux disease",
    "A04A": "Antiemetics and antinauseants",
    "A06A": "Drugs for constipation",
    "A07A": "Intestinal antiinfectives",
    "A07D": "Antipropulsives",
    "A09A": "Digestives, incl. enzymes",
    "A10A": "Insulins and analogues",
    "A10B": "Blood glucose lowering drugs, excl. insulins",
    "A11C": "Vitamin A and D, incl. combinations of the two",
    "A11D": "Vitamin B1, plain and in combination with vitamin B6 and B12",
    "A12A": "Calcium",
    "A12B": "Potassium",
    "A12C": "Other mineral supplements",
    "B01A": "Antithrombotic agents",
    "B02B": "Vitamin K and other hemostatics",
    "B03A": "Iron preparations",
    "B03B": "Vitamin B12 and folic acid",
    "B05A": "Blood and related products",
    "B05B": "I.V. solutions",
    "B05X": "I.V. solution additives",
    "C01A": "Cardiac glycosides",
    "C01B": "Antiarrhythmics, class I and III",
    "C01C": "Cardiac stimulants excl. cardiac glycosides",
    "C01D": "Vasodilators used in cardiac diseases",
    "C02A": "Antiadrenergic agents, centrally acting",
    "C02D": "Arteriolar smooth muscle, agents acting on",
    "C03A": "Low-ceiling diuretics, thiazides",
    "C03C": "High-ceiling diuretics",
    "C03D": "Potassium-sparing agents",
    "C07A": "Beta blocking agents",
    "C08C": "Selective calcium channel blockers with mainly vascular effects",
    "C08D": "Selective calcium channel blockers with direct cardiac effects",
    "C09A": "ACE inhibitors, plain",
    "C09C": "Angiotensin II receptor blockers, plain",
    "C10A": "Lipid modifying agents, plain",
    "D01A": "Antifungals for topical use",
    "G04C": "Drugs used in benign prostatic hypertrophy",
    "H01B": "Posterior pituitary lobe hormones",
    "H02A": "Corticosteroids for systemic use, plain",
    "H03A": "Thyroid preparations",
    "J01C": "Beta-lactam antibacterials, penicillins",
    "J01D": "Other beta-lactam antibacterials",
    "J01E": "Sulfonamides and trimethoprim",
    "J01F": "Macrolides, lincosamides and streptogramins",
    "J01G": "Aminoglycoside antibacterials",
    "J01M": "Quinolone antibacterials",
    "J01X": "Other antibacterials",
    "J02A": "Antimycotics for systemic use",
    "J05A": "Direct acting antivirals",
    "M01A": "Antiinflammatory and antirheumatic products, non-steroids",
    "M03A": "Muscle relaxants, peripherally acting agents",
    "M04A": "Antigout preparations",
    "N01A": "Anesthetics, general",
    "N01B": "Anesthetics, local",
    "N02A": "Opioids",
    "N02B": "Other analgesics and antipyretics",
    "N03A": "Antiepileptics",
    "N04B": "Dopaminergic agents",
    "N05A": "Antipsychotics",
    "N05B": "Anxiolytics",
    "N05C": "Hypnotics and sedatives",
    "N06A": "Antidepressants",
    "N06D": "Anti-dementia drugs",
    "N07B": "Drugs used in addictive disorders",
    "R03A": "Adrenergics, inhalants",
    "R03B": "Other drugs for obstructive airway diseases, inhalants",
    "R05C": "Expectorants, excl. combinations with cough suppressants",
    "R06A": "Antihistamines for systemic use",
    "V03A": "All other therapeutic products",
}


@dataclass(frozen=True)
class Procedure:
    """An ICD-9 procedure and the drugs it brings (ATC3 -> probability per visit)."""

    code: str
    name: str
    drugs: Mapping[str, float] = field(default_factory=dict)


PROCEDURES: tuple[Procedure, ...] = (
    Procedure("3893", "Venous catheterization, not elsewhere classified"),
    Procedure("3891", "Arterial catheterization"),
    Procedure("3895", "Venous catheterization for renal dialysis"),
    Procedure("9604", "Insertion of endotracheal tube", {"N01A": 0.7, "M03A": 0.45, "N05C": 0.3}),
    Procedure(
        "9671",
        "Continuous invasive mechanical ventilation for less than 96 consecutive hours",
        {"N01A": 0.6, "N02A": 0.6, "N05C": 0.3, "A02B": 0.4},
    ),
    Procedure(
        "9672",
        "Continuous invasive mechanical ventilation for 96 consecutive hours or more",
        {"N01A": 0.7, "N02A": 0.7, "N05C": 0.4, "A02B": 0.5, "N05A": 0.3, "J02A": 0.15},
    ),
    Procedure("9390", "Non-invasive mechanical ventilation"),
    Procedure("3995", "Hemodialysis", {"V03A": 0.5, "A12A": 0.4, "B05X": 0.3, "B03A": 0.3}),
    Procedure("9904", "Transfusion of packed cells"),
    Procedure("9905", "Transfusion of platelets"),
    Procedure("9907", "Transfusion of other serum", {"B02B": 0.4}),
    Procedure("966", "Enteral infusion of concentrated nutritional substances", {"A06A": 0.3}),
    Procedure(
        "9915",
        "Parenteral infusion of concentrated nutritional substances",
        {"B05B": 0.7, "B05X": 0.7},
    ),
    Procedure("3722", "Left heart cardiac catheterization", {"N01B": 0.3}),
    Procedure("8856", "Coronary arteriography using two catheters", {"N01B": 0.4}),
    Procedure(
        "0066",
        "Percutaneous transluminal coronary angioplasty [PTCA]",
        {"B01A": 0.95, "C10A": 0.6},
    ),
    Procedure("3607", "Insertion of drug-eluting coronary artery stent(s)", {"B01A": 0.9}),
    Procedure("3606", "Insertion of non-drug-eluting coronary artery stent(s)", {"B01A": 0.9}),
    Procedure("0040", "Procedure on single vessel"),
    Procedure(
        "3615",
        "Single internal mammary-coronary artery bypass",
        {"B01A": 0.7, "C10A": 0.5},
    ),
    Procedure(
        "3961",
        "Extracorporeal circulation auxiliary to open heart surgery",
        {
            "N02A": 0.8,
            "N01A": 0.6,
            "C01C": 0.6,
            "J01D": 0.9,
            "C03C": 0.55,
            "A12C": 0.5,
            "N01B": 0.4,
            "B05X": 0.4,
            "C07A": 0.4,
        },
    ),
    Procedure("8872", "Diagnostic ultrasound of heart"),
    Procedure("9962", "Other electric countershock of heart", {"C01B": 0.5, "B01A": 0.5}),
    Procedure("3491", "Thoracentesis", {"N01B": 0.5}),
    Procedure("3404", "Insertion of intercostal catheter for drainage", {"N02A": 0.5}),
    Procedure("5491", "Percutaneous abdominal drainage", {"B05A": 0.6}),
    Procedure("4513", "Other endoscopy of small intestine", {"A02B": 0.6}),
    Procedure("4523", "Colonoscopy"),
    Procedure("8703", "Computerized axial tomography of head"),
    Procedure("3324", "Closed [endoscopic] biopsy of bronchus", {"N01B": 0.6}),
    Procedure("311", "Temporary tracheostomy", {"N02A": 0.4}),
    Procedure("4311", "Percutaneous [endoscopic] gastrostomy [PEG]", {"J01D": 0.3}),
    Procedure("5794", "Insertion of indwelling urinary catheter"),
    Procedure("0331", "Spinal tap", {"N01B": 0.5}),
    Procedure("0014", "Injection or infusion of oxazolidinone class of antibiotics"),
)

# Procedures coded at any admission, whatever the reason (probability per visit).
BASE_PROCEDURES: dict[str, float] = {"3893": 0.45, "966": 0.12, "5794": 0.06, "3891": 0.15}

# Common ward drugs given at any admission (probability per visit).
BASE_DRUGS: dict[str, float] = {
    "N02B": 0.75,
    "A06A": 0.7,
    "B01A": 0.55,
    "A02B": 0.5,
    "B05B": 0.5,
    "A12C": 0.45,
    "N02A": 0.45,
    "A04A": 0.4,
    "A12B": 0.4,
    "B05X": 0.4,
    "A12A": 0.25,
    "N05B": 0.25,
    "N05C": 0.2,
    "M01A": 0.12,
    "R06A": 0.12,
    "J01D": 0.1,
    "D01A": 0.08,
    "A07D": 0.05,
}


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


def _chronic(code: str, name: str, prevalence: float, **kw: Any) -> Condition:
    return Condition(code, name, True, prevalence, **kw)


def _acute(code: str, name: str, prevalence: float, **kw: Any) -> Condition:
    return Condition(code, name, False, prevalence, **kw)


CONDITIONS: tuple[Condition, ...] = (
    # --- chronic ---------------------------------------------------------------------------
    _chronic(
        "4019",
        "Unspecified essential hypertension",
        0.45,
        age=0.25,
        drugs={"C07A": 0.45, "C09A": 0.35, "C08C": 0.3, "C03A": 0.15, "C09C": 0.12, "C02A": 0.05},
    ),
    _chronic(
        "25000",
        "Diabetes mellitus without mention of complication, type II or unspecified type, "
        "not stated as uncontrolled",
        0.25,
        age=0.1,
        drugs={"A10A": 0.75, "A10B": 0.3},
        complications={"V5867": 0.3},
    ),
    _chronic(
        "4280",
        "Congestive heart failure, unspecified",
        0.17,
        age=0.45,
        drugs={"C03C": 0.85, "C07A": 0.5, "C09A": 0.3, "C01A": 0.12, "C03D": 0.15},
        procedures={"8872": 0.15},
    ),
    _chronic(
        "42731",
        "Atrial fibrillation",
        0.2,
        age=0.5,
        male=1.2,
        drugs={"B01A": 0.75, "C07A": 0.5, "C01B": 0.25, "C01A": 0.15, "C08D": 0.2},
        procedures={"9962": 0.04},
        complications={"V5861": 0.4},
    ),
    _chronic(
        "41401",
        "Coronary atherosclerosis of native coronary artery",
        0.2,
        age=0.35,
        male=1.6,
        drugs={"B01A": 0.8, "C10A": 0.75, "C07A": 0.6, "C01D": 0.3},
        complications={"412": 0.3, "V4582": 0.15},
    ),
    _chronic("2724", "Other and unspecified hyperlipidemia", 0.22, age=0.15, drugs={"C10A": 0.8}),
    _chronic("2720", "Pure hypercholesterolemia", 0.06, age=0.1, drugs={"C10A": 0.8}),
    _chronic(
        "5859",
        "Chronic kidney disease, unspecified",
        0.1,
        age=0.4,
        drugs={"A12A": 0.3, "V03A": 0.3, "B03A": 0.2, "A11C": 0.3},
        complications={"2859": 0.3},
    ),
    _chronic(
        "40390",
        "Hypertensive chronic kidney disease, unspecified, with chronic kidney disease stage I "
        "through stage IV, or unspecified",
        0.08,
        age=0.4,
        drugs={"C08C": 0.35, "C07A": 0.35, "V03A": 0.25, "A11C": 0.25, "C02D": 0.1},
    ),
    _chronic(
        "496",
        "Chronic airway obstruction, not elsewhere classified",
        0.08,
        age=0.35,
        drugs={"R03A": 0.8, "R03B": 0.7, "H02A": 0.3},
    ),
    _chronic(
        "49390",
        "Asthma, unspecified type, unspecified",
        0.05,
        age=-0.2,
        male=0.6,
        drugs={"R03A": 0.85, "R03B": 0.4, "R06A": 0.2},
    ),
    _chronic(
        "2449",
        "Unspecified acquired hypothyroidism",
        0.09,
        age=0.25,
        male=0.3,
        drugs={"H03A": 0.95},
    ),
    _chronic("53081", "Esophageal reflux", 0.12, drugs={"A02B": 0.9}),
    _chronic(
        "311",
        "Depressive disorder, not elsewhere classified",
        0.1,
        age=-0.05,
        male=0.6,
        drugs={"N06A": 0.85},
    ),
    _chronic("30000", "Anxiety state, unspecified", 0.05, age=-0.2, male=0.6, drugs={"N05B": 0.8}),
    _chronic("3051", "Tobacco use disorder", 0.12, age=-0.25, male=1.3, drugs={"N07B": 0.5}),
    _chronic(
        "30390",
        "Other and unspecified alcohol dependence, unspecified",
        0.06,
        age=-0.2,
        male=2.5,
        drugs={"A11D": 0.85, "B03B": 0.6, "N05B": 0.6},
    ),
    _chronic(
        "5715",
        "Cirrhosis of liver without mention of alcohol",
        0.025,
        drugs={"A06A": 0.7, "A07A": 0.6, "C03D": 0.5, "C03C": 0.4},
        complications={"2875": 0.4},
    ),
    _chronic(
        "5712",
        "Alcoholic cirrhosis of liver",
        0.02,
        male=2.0,
        drugs={"A06A": 0.7, "A07A": 0.6, "C03D": 0.5, "A11D": 0.6},
        complications={"2875": 0.4, "30390": 0.5},
    ),
    _chronic("3320", "Paralysis agitans", 0.02, age=0.5, male=1.4, drugs={"N04B": 0.95}),
    _chronic(
        "2749", "Gout, unspecified", 0.03, age=0.3, male=2.5, drugs={"M04A": 0.85, "M01A": 0.2}
    ),
    _chronic("412", "Old myocardial infarction", 0.04, age=0.3, male=1.5, drugs={"C10A": 0.5}),
    _chronic("3310", "Alzheimer's disease", 0.02, age=0.7, drugs={"N06D": 0.7, "N05A": 0.3}),
    _chronic(
        "60000",
        "Hypertrophy (benign) of prostate without urinary obstruction and other lower urinary "
        "tract symptom (LUTS)",
        0.08,
        age=0.4,
        male=math.inf,
        drugs={"G04C": 0.85},
    ),
    _chronic("32723", "Obstructive sleep apnea (adult)(pediatric)", 0.04, male=1.8),
    _chronic(
        "34590",
        "Epilepsy, unspecified, without mention of intractable epilepsy",
        0.03,
        age=-0.2,
        drugs={"N03A": 0.95},
    ),
    _chronic("27800", "Obesity, unspecified", 0.06, age=-0.1),
    _chronic(
        "07054",
        "Chronic hepatitis C without mention of hepatic coma",
        0.02,
        age=-0.3,
        male=1.8,
        drugs={"J05A": 0.1},
    ),
    _chronic(
        "042",
        "Human immunodeficiency virus [HIV] disease",
        0.01,
        age=-0.4,
        male=2.5,
        drugs={"J05A": 0.9, "J01E": 0.4},
    ),
    _chronic("V4581", "Aortocoronary bypass status", 0.04, age=0.3, male=2.0),
    _chronic("4241", "Aortic valve disorders", 0.03, age=0.5),
    _chronic("4240", "Mitral valve disorders", 0.03, age=0.4, male=0.8),
    _chronic("4168", "Other chronic pulmonary heart diseases", 0.04, age=0.3, male=0.8),
    _chronic(
        "4254",
        "Other primary cardiomyopathies",
        0.03,
        age=0.2,
        male=1.5,
        drugs={"C07A": 0.6, "C09A": 0.5, "C03D": 0.3},
    ),
    # --- acute (per visit) ------------------------------------------------------------------
    _acute(
        "0389",
        "Unspecified septicemia",
        0.0,
        drugs={"J01X": 0.8, "J01D": 0.7, "J01C": 0.35, "J01G": 0.1},
        complications={"5849": 0.2},
    ),
    _acute("99591", "Sepsis", 0.0, drugs={"J01D": 0.5, "J01X": 0.5}),
    _acute("99592", "Severe sepsis", 0.0, complications={"78552": 0.5}),
    _acute(
        "78552",
        "Septic shock",
        0.0,
        drugs={"C01C": 0.9, "H01B": 0.45, "H02A": 0.35},
        procedures={"3891": 0.6, "9604": 0.4, "9671": 0.3},
    ),
    _acute(
        "486",
        "Pneumonia, organism unspecified",
        0.02,
        age=0.3,
        drugs={"J01D": 0.7, "J01F": 0.45, "J01X": 0.4, "J01M": 0.2, "R03A": 0.3},
        procedures={"3324": 0.04},
        complications={"51881": 0.15},
    ),
    _acute(
        "5070",
        "Pneumonitis due to inhalation of food or vomitus",
        0.01,
        age=0.4,
        drugs={"J01X": 0.6, "J01D": 0.5, "J01C": 0.4},
    ),
    _acute(
        "51881",
        "Acute respiratory failure",
        0.02,
        drugs={"N05C": 0.3, "N02A": 0.4, "M03A": 0.2},
        procedures={"9604": 0.7, "9671": 0.55, "9672": 0.35, "9390": 0.15, "3891": 0.5},
    ),
    _acute(
        "5849",
        "Acute kidney failure, unspecified",
        0.07,
        age=0.2,
        drugs={"V03A": 0.2, "B05B": 0.3},
        procedures={"3995": 0.12, "3895": 0.1},
        complications={"2767": 0.25, "2762": 0.3},
        withhold=("M01A", "C09A", "C09C", "A10B"),
    ),
    _acute(
        "5990",
        "Urinary tract infection, site not specified",
        0.06,
        age=0.2,
        male=0.5,
        drugs={"J01M": 0.45, "J01D": 0.45, "J01E": 0.15, "J01G": 0.05},
    ),
    _acute(
        "41071",
        "Subendocardial infarction, initial episode of care",
        0.01,
        age=0.3,
        male=1.5,
        drugs={"B01A": 0.95, "C10A": 0.8, "C07A": 0.7, "C01D": 0.5, "N02A": 0.3},
    ),
    _acute(
        "4275",
        "Cardiac arrest",
        0.003,
        drugs={"C01C": 0.8, "C01B": 0.5, "N01A": 0.5},
        procedures={"9604": 0.8, "9671": 0.5, "9962": 0.3},
    ),
    _acute("4271", "Paroxysmal ventricular tachycardia", 0.01, age=0.3, drugs={"C01B": 0.85}),
    _acute("2762", "Acidosis", 0.04, drugs={"B05X": 0.6}),
    _acute("2761", "Hyposmolality and/or hyponatremia", 0.06, age=0.2, drugs={"B05B": 0.3}),
    _acute(
        "2767",
        "Hyperpotassemia",
        0.02,
        drugs={"A10A": 0.5, "A12A": 0.5, "V03A": 0.4},
        withhold=("A12B", "C03D"),
    ),
    _acute("2768", "Hypopotassemia", 0.07, drugs={"A12B": 0.95}),
    _acute(
        "2875",
        "Thrombocytopenia, unspecified",
        0.04,
        procedures={"9905": 0.3},
        withhold=("B01A",),
    ),
    _acute(
        "2851",
        "Acute posthemorrhagic anemia",
        0.04,
        drugs={"B03A": 0.2},
        procedures={"9904": 0.7},
    ),
    _acute(
        "2859",
        "Anemia, unspecified",
        0.12,
        age=0.15,
        drugs={"B03A": 0.35, "B03B": 0.15},
        procedures={"9904": 0.25},
    ),
    _acute(
        "5789",
        "Hemorrhage of gastrointestinal tract, unspecified",
        0.01,
        drugs={"A02B": 0.98, "B02B": 0.2},
        procedures={"9904": 0.75, "4513": 0.5, "4523": 0.3, "9907": 0.2},
        complications={"2851": 0.6},
        withhold=("B01A", "M01A"),
    ),
    _acute("4589", "Hypotension, unspecified", 0.04, drugs={"C01C": 0.35, "B05B": 0.4}),
    _acute(
        "43491",
        "Cerebral artery occlusion, unspecified with cerebral infarction",
        0.005,
        age=0.4,
        drugs={"B01A": 0.85, "C10A": 0.7},
        procedures={"8703": 0.6},
    ),
    _acute(
        "431",
        "Intracerebral hemorrhage",
        0.002,
        age=0.2,
        drugs={"N03A": 0.6, "C08C": 0.5, "C07A": 0.3},
        procedures={"8703": 0.7, "9604": 0.3},
        withhold=("B01A", "M01A"),
    ),
    _acute(
        "85220",
        "Subdural hemorrhage following injury without mention of open intracranial wound, "
        "unspecified state of consciousness",
        0.003,
        age=0.3,
        drugs={"N03A": 0.6},
        procedures={"8703": 0.6},
        withhold=("B01A", "M01A"),
    ),
    _acute("78039", "Other convulsions", 0.01, drugs={"N03A": 0.9, "N05B": 0.6}),
    _acute(
        "2930",
        "Delirium due to conditions classified elsewhere",
        0.02,
        age=0.5,
        drugs={"N05A": 0.8},
    ),
    _acute("41519", "Other pulmonary embolism and infarction", 0.005, drugs={"B01A": 0.98}),
    _acute(
        "45341",
        "Acute venous embolism and thrombosis of deep vessels of proximal lower extremity",
        0.005,
        drugs={"B01A": 0.95},
    ),
    _acute(
        "00845",
        "Intestinal infection due to Clostridium difficile",
        0.01,
        age=0.3,
        drugs={"J01X": 0.9, "A07A": 0.7},
    ),
    _acute("5770", "Acute pancreatitis", 0.005, age=-0.3, drugs={"N02A": 0.8, "A04A": 0.5}),
    _acute(
        "5119",
        "Unspecified pleural effusion",
        0.04,
        age=0.2,
        drugs={"C03C": 0.3},
        procedures={"3491": 0.35, "3404": 0.15},
    ),
    _acute(
        "2639",
        "Unspecified protein-calorie malnutrition",
        0.03,
        age=0.2,
        drugs={"B05B": 0.3},
        procedures={"966": 0.5, "9915": 0.2, "4311": 0.1},
    ),
    _acute("27651", "Dehydration", 0.02, drugs={"B05B": 0.6}),
    _acute(
        "25013",
        "Diabetes with ketoacidosis, type I [juvenile type], uncontrolled",
        0.0,
        drugs={"A10A": 0.98, "A12B": 0.8, "B05B": 0.7},
    ),
    _acute("99859", "Other postoperative infection", 0.005, drugs={"J01X": 0.7, "J01D": 0.6}),
    _acute(
        "78820",
        "Retention of urine, unspecified",
        0.01,
        male=2.5,
        drugs={"G04C": 0.5},
        procedures={"5794": 0.5},
    ),
    _acute("570", "Acute and subacute necrosis of liver", 0.003, drugs={"R05C": 0.5}),
    _acute("7907", "Bacteremia", 0.01, drugs={"J01X": 0.7, "J01D": 0.5}, procedures={"0014": 0.1}),
    # Long-term-use codes: reached through complications, drive their drug class.
    _acute("V5861", "Long-term (current) use of anticoagulants", 0.01, drugs={"B01A": 0.95}),
    _acute("V5867", "Long-term (current) use of insulin", 0.0, drugs={"A10A": 0.95}),
    # Incidental codes: frequent in ICU records, no drug of their own (noise for a model).
    _acute(
        "E8782",
        "Surgical operation with anastomosis, bypass, or graft, with natural or artificial "
        "tissues used as implant causing abnormal patient reaction, or later complication, "
        "without mention of misadventure at time of operation",
        0.005,
    ),
    _acute("V1582", "Personal history of tobacco use", 0.08, age=0.2),
    _acute("V4582", "Percutaneous transluminal coronary angioplasty status", 0.03, age=0.3),
    _acute("V1251", "Personal history of venous thrombosis and embolism", 0.02),
    _acute("E8497", "Accidents occurring in residential institution", 0.04),
    _acute(
        "E8798",
        "Other specified procedures as the cause of abnormal reaction of patient, or of later "
        "complication, without mention of misadventure at time of procedure",
        0.03,
    ),
    _acute("V4986", "Do not resuscitate status", 0.03, age=0.6),
    _acute("5180", "Pulmonary collapse", 0.05),
    _acute("2869", "Other and unspecified coagulation defects", 0.03, drugs={"B02B": 0.5}),
    _acute("79092", "Abnormal coagulation profile", 0.03, drugs={"B02B": 0.3}),
    _acute("42789", "Other specified cardiac dysrhythmias", 0.04, age=0.3),
    _acute("2753", "Disorders of phosphorus metabolism", 0.04, drugs={"V03A": 0.3}),
    _acute("2752", "Disorders of magnesium metabolism", 0.04, drugs={"A12C": 0.8}),
    _acute("2760", "Hyperosmolality and/or hypernatremia", 0.03, drugs={"B05B": 0.5}),
    _acute("78791", "Diarrhea", 0.04, drugs={"A07D": 0.4}),
    _acute("78097", "Altered mental status", 0.04, age=0.3),
    _acute("9971", "Cardiac complications, not elsewhere classified", 0.01, age=0.2),
    _acute("7802", "Syncope and collapse", 0.03, age=0.3),
    _acute("78659", "Other chest pain", 0.04),
    _acute("V1046", "Personal history of malignant neoplasm of prostate", 0.02, male=math.inf),
    _acute("V103", "Personal history of malignant neoplasm of breast", 0.02, male=0.0),
    _acute("2809", "Iron deficiency anemia, unspecified", 0.03, drugs={"B03A": 0.6}),
    _acute("7850", "Tachycardia, unspecified", 0.03),
)


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


REASONS: tuple[Reason, ...] = (
    Reason(
        "sepsis",
        14,
        age=0.2,
        diagnoses={
            "0389": 1.0,
            "99591": 0.5,
            "99592": 0.35,
            "78552": 0.25,
            "5849": 0.4,
            "5990": 0.3,
            "486": 0.25,
            "2762": 0.3,
            "4589": 0.3,
            "7907": 0.2,
        },
        procedures={"3893": 0.6, "3891": 0.3},
    ),
    Reason(
        "pneumonia",
        12,
        age=0.3,
        boost=("496",),
        diagnoses={"486": 1.0, "51881": 0.3, "5119": 0.2, "2761": 0.15},
    ),
    Reason(
        "respiratory failure",
        7,
        age=0.2,
        boost=("496", "49390"),
        diagnoses={"51881": 1.0, "486": 0.3, "2762": 0.3, "5070": 0.15},
        procedures={"9604": 0.6, "9671": 0.5, "9390": 0.2},
    ),
    Reason(
        "myocardial infarction",
        10,
        age=0.3,
        male=1.5,
        boost=("41401",),
        diagnoses={"41071": 1.0, "41401": 0.8, "4280": 0.3, "42731": 0.15, "4271": 0.1},
        procedures={"3722": 0.6, "8856": 0.6, "0066": 0.45, "3607": 0.4, "0040": 0.35, "3606": 0.1},
    ),
    Reason(
        "cardiac surgery",
        12,
        age=0.2,
        male=1.8,
        boost=("41401", "4241"),
        diagnoses={
            "41401": 0.85,
            "4241": 0.3,
            "4240": 0.15,
            "42731": 0.3,
            "2851": 0.4,
            "4019": 0.5,
            "9971": 0.25,
            "E8782": 0.2,
        },
        procedures={"3615": 0.7, "3961": 0.9, "3891": 0.8, "8872": 0.4, "9904": 0.4},
    ),
    Reason(
        "heart failure",
        8,
        age=0.4,
        boost=("4280",),
        diagnoses={"4280": 1.0, "5849": 0.3, "42731": 0.3, "5119": 0.25, "2761": 0.2},
        procedures={"8872": 0.3},
    ),
    Reason(
        "gastrointestinal bleed",
        7,
        age=0.2,
        boost=("5715", "5712"),
        diagnoses={"5789": 1.0, "2851": 0.6, "2875": 0.2, "5715": 0.15},
        procedures={"4513": 0.55, "9904": 0.7, "4523": 0.3, "9907": 0.2},
    ),
    Reason(
        "ischemic stroke",
        5,
        age=0.4,
        boost=("42731",),
        diagnoses={"43491": 1.0, "4019": 0.5, "2724": 0.3},
        procedures={"8703": 0.6, "9604": 0.15},
    ),
    Reason(
        "intracerebral hemorrhage",
        3,
        age=0.3,
        diagnoses={"431": 1.0, "4019": 0.4, "78039": 0.15},
        procedures={"8703": 0.7, "9604": 0.3, "3891": 0.4},
    ),
    Reason(
        "subdural hematoma",
        3,
        age=0.3,
        male=1.4,
        diagnoses={"85220": 1.0, "E8497": 0.3, "V5861": 0.2},
        procedures={"8703": 0.8},
    ),
    Reason(
        "seizure",
        2.5,
        age=-0.3,
        boost=("34590", "30390"),
        diagnoses={"78039": 1.0, "30390": 0.2},
        procedures={"8703": 0.4, "9604": 0.25, "0331": 0.1},
    ),
    Reason(
        "diabetic ketoacidosis",
        2.5,
        age=-0.6,
        boost=("25000",),
        diagnoses={"25013": 1.0, "2762": 0.6, "27651": 0.4, "2768": 0.3},
    ),
    Reason(
        "acute pancreatitis",
        2,
        age=-0.3,
        boost=("30390",),
        diagnoses={"5770": 1.0, "30390": 0.3, "2762": 0.2},
    ),
    Reason(
        "urosepsis and kidney injury",
        4,
        age=0.4,
        diagnoses={"5990": 1.0, "5849": 0.5, "27651": 0.3},
    ),
    Reason(
        "venous thromboembolism",
        3,
        diagnoses={"41519": 0.75, "45341": 0.6, "V1251": 0.2},
    ),
    Reason(
        "clostridium difficile colitis",
        1.5,
        age=0.3,
        diagnoses={"00845": 1.0, "27651": 0.4, "5849": 0.3},
    ),
    Reason(
        "liver failure",
        3,
        boost=("5715", "5712"),
        diagnoses={"570": 0.3, "5712": 0.4, "5715": 0.3, "2875": 0.4, "2930": 0.2},
        procedures={"5491": 0.4},
    ),
)

# Interacting ATC3 pairs (clinically known class-level interactions). When both would be
# prescribed at a visit, the second is withheld with probability DDI_AVOIDANCE.
DDI_PAIRS: tuple[tuple[str, str], ...] = (
    ("B01A", "M01A"),  # anticoagulant + NSAID: bleeding
    ("C09A", "C03D"),  # ACE inhibitor + potassium-sparing diuretic: hyperkalemia
    ("C09A", "A12B"),  # ACE inhibitor + potassium: hyperkalemia
    ("C09C", "C03D"),  # ARB + potassium-sparing diuretic: hyperkalemia
    ("C09A", "J01E"),  # ACE inhibitor + trimethoprim: hyperkalemia
    ("C09A", "M01A"),  # ACE inhibitor + NSAID: kidney injury
    ("C03C", "M01A"),  # loop diuretic + NSAID
    ("H02A", "M01A"),  # corticosteroid + NSAID: GI bleeding
    ("N02A", "N05B"),  # opioid + benzodiazepine: respiratory depression
    ("N02A", "N05C"),  # opioid + hypnotic
    ("C07A", "C08D"),  # beta blocker + verapamil/diltiazem: bradycardia
    ("C01B", "J01F"),  # amiodarone + macrolide: QT prolongation
    ("N05A", "J01F"),  # antipsychotic + macrolide: QT prolongation
    ("N05A", "J01M"),  # antipsychotic + quinolone: QT prolongation
    ("C01B", "N05A"),  # amiodarone + antipsychotic: QT prolongation
    ("C01B", "C01A"),  # amiodarone + digoxin: digoxin toxicity
    ("C10A", "J01F"),  # statin + macrolide: myopathy
    ("J01X", "J01G"),  # vancomycin + aminoglycoside: nephrotoxicity
    ("C03C", "J01G"),  # loop diuretic + aminoglycoside: ototoxicity
    ("C03C", "C01A"),  # loop diuretic + digoxin: hypokalemia, toxicity
    ("H02A", "J01M"),  # corticosteroid + quinolone: tendon rupture
    ("N04B", "N05A"),  # dopaminergic + antipsychotic: antagonism
    ("J01M", "A12C"),  # quinolone + magnesium: chelation
    ("N06A", "N02A"),  # antidepressant + opioid (tramadol): serotonin syndrome
)

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


__all__ = ["SyntheticCohort", "generate", "summary", "write"]
