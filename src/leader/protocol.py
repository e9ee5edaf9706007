"""Evaluation protocols: this project's default and the LEADER paper's (arXiv 2402.02803).

The default protocol keeps every patient, seven profile fields (the source's five plus
gender and a ten-year age band), every drug, standardised teacher states as the
distillation target, and scores each model at 0.5 and at a threshold chosen on validation.
The paper's protocol (``--protocol paper`` / ``protocol: paper``) reproduces what the
authors' code does, so that numbers can stand beside the paper's:

- cohort: patients with at least two distinct admissions in the prescriptions table,
  counted *before* the prescriptions are joined with diagnoses and procedures (so some
  patients end up single-visit after the join); the source's five profile fields (no age
  band, no gender); only drugs with a SMILES (after the top-300 cut, as SafeDrug's recipe);
  one sample per patient, the last visit; MIMIC-IV: a random 15% of patients and the top
  1,000 procedures;
- student: scored at a fixed threshold of 0.3, distilled towards the raw teacher hidden
  state (no standardisation);
- teacher: scored at 0.5.

>>> paper_cohort("mimic3")["min_prescribed_admissions"]
2
>>> PAPER_STUDENT["threshold"]
0.3
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from leader.errors import LeaderError

PROTOCOLS: tuple[str, ...] = ("default", "paper")
SMILES_FILE = "atc3_smiles.csv"  # looked for in the resources folder when none is given

# The student as the authors score and distil it.
PAPER_STUDENT: dict[str, Any] = {
    "choose_threshold": False,  # no threshold tuned on validation ...
    "threshold": 0.3,  # ... a fixed 0.3 (their student's evaluation code)
    "standardize_teacher": False,  # MSE to the raw teacher hidden state
    "choose_distillation": False,  # their fixed alpha (and no soft labels)
}
PAPER_TEACHER_THRESHOLD = 0.5  # their teacher's evaluation code


def check(protocol: str, where: str = "--protocol") -> str:
    """The protocol name, or a LeaderError naming the known ones."""
    if protocol not in PROTOCOLS:
        raise LeaderError(f"{where}: unknown protocol {protocol!r}; known: {', '.join(PROTOCOLS)}")
    return protocol


def profile_fields(source: str) -> tuple[str, ...]:
    """The five profile fields the paper uses for a MIMIC source."""
    if source == "mimic3":
        from leader.data.sources.mimic3 import PROFILE_FIELDS as MIMIC3_FIELDS

        return MIMIC3_FIELDS
    if source == "mimic4":
        from leader.data.sources.mimic4 import PROFILE_FIELDS as MIMIC4_FIELDS

        return MIMIC4_FIELDS
    raise LeaderError(f"the paper protocol is defined for mimic3 and mimic4, not {source!r}")


def paper_cohort(source: str) -> dict[str, Any]:
    """Cohort options (``CohortOptions`` fields) of the paper for ``source``.

    ``require_smiles`` is left to the caller (a file path: the resources' atc3_smiles.csv).
    """
    options: dict[str, Any] = {
        "min_prescribed_admissions": 2,
        "profile_fields": profile_fields(source),
        "samples": "last",
        "top_med": 300,
        "top_diag": 2000,
    }
    if source == "mimic4":
        options["top_proc"] = 1000
    return options


PAPER_MIMIC4_PATIENT_FRACTION = 0.15  # a random 15% of MIMIC-IV patients (seed 42)


def cohort_defaults(protocol: str, source: str, resources: str | None) -> dict[str, Any]:
    """Cohort options a protocol sets (explicit options win over them); {} for "default".

    The SMILES file defaults to ``RESOURCES/atc3_smiles.csv``.
    """
    if check(protocol) == "default":
        return {}
    options = paper_cohort(source)
    if resources is None or not (Path(resources) / SMILES_FILE).is_file():
        raise LeaderError(
            f"the paper protocol keeps only drugs with a SMILES: {SMILES_FILE} is not in the "
            f"resources folder ({resources}); give --require-smiles FILE (columns atc3,smiles)"
        )
    options["require_smiles"] = str(Path(resources) / SMILES_FILE)
    return options


def student_defaults(protocol: str) -> dict[str, Any]:
    """Student options a protocol sets (explicit options win over them)."""
    return dict(PAPER_STUDENT) if check(protocol) == "paper" else {}
