"""From per-source tables to the dataset directory: top-k, filters, splits, profiles, stats.

Every source (MIMIC-III, MIMIC-IV, generic events, the synthetic cohort) produces a
:class:`RawCohort`; :func:`build` applies the shared rules of the GAMENet / SafeDrug /
LEADER recipe and records, rule by rule, how many visits and patients each removed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from leader import __version__
from leader.data.store import KIND_COLUMNS, KINDS, UNKNOWN, VisitDataset, Vocabulary
from leader.data.tables import file_checksum
from leader.errors import LeaderError


@dataclass
class CohortOptions:
    top_med: int | None = 300  # keep the K most frequent drugs (visit frequency); None = all
    top_diag: int | None = 2000  # keep the K most frequent diagnosis codes; None = all
    top_proc: int | None = None  # keep the K most frequent procedure codes; None = all
    min_visits: int = 1  # drop patients with fewer kept visits (2 reproduces GAMENet)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)  # train/val/test shares, by patient
    seed: int = 42  # seeds the patient shuffle of the split
    samples: str = "all"  # default sample mode of the dataset: "all" visits or "last" only

    def __post_init__(self) -> None:
        if len(self.split) != 3 or any(s < 0 for s in self.split) or sum(self.split) <= 0:
            raise LeaderError(f"--split needs three non-negative shares, got {self.split}")
        if self.samples not in ("all", "last"):
            raise LeaderError(f"--samples must be 'all' or 'last', got {self.samples!r}")
        if self.min_visits < 1:
            raise LeaderError(f"--min-visits must be at least 1, got {self.min_visits}")
        for name in ("top_med", "top_diag", "top_proc"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise LeaderError(f"--{name.replace('_', '-')} must be at least 1, got {value}")


@dataclass
class RawCohort:
    """What a source reader hands to :func:`build`."""

    source: str
    visits: pd.DataFrame  # patient_id, visit_id (str), time (datetime64): one row per visit
    codes: pd.DataFrame  # visit_id, kind, code: de-duplicated, first-seen order per visit
    names: dict[str, dict[str, str]]  # kind -> code -> name
    # Profile fields, either per visit (taken from each patient's first kept visit) ...
    visit_profiles: pd.DataFrame | None = None  # visit_id + fields
    # ... or per patient (generic events with a profile table).
    patient_profiles: pd.DataFrame | None = None  # patient_id + fields
    ddi_pairs: list[tuple[str, str]] = field(default_factory=list)
    ddi_source: str = "none"
    funnel: list[dict[str, Any]] = field(default_factory=list)  # rules the reader applied
    counts: dict[str, Any] = field(default_factory=dict)  # row counters (mapping, drops)
    inputs: list[Path] = field(default_factory=list)  # files read, for the manifest
    options: dict[str, Any] = field(default_factory=dict)  # source options, for the manifest
    time_kind: str = "datetime"  # kind of visits.time: "date", "datetime" or "number"


class Funnel:
    """Visits and patients left after each rule, and what the rule removed."""

    def __init__(self, visits: pd.DataFrame, steps: list[dict[str, Any]]) -> None:
        self.steps = list(steps)
        self.visits = len(visits)
        self.patients = int(visits["patient_id"].nunique())
        if not self.steps:
            self.steps.append(
                {"rule": "visits read", "visits": self.visits, "patients": self.patients}
            )
        for position, step in enumerate(self.steps):  # a reader's rule may have emptied it
            if step["visits"] == 0:
                raise empty_cohort(self.steps[: position + 1])

    def record(self, rule: str, visits: pd.DataFrame) -> None:
        left_visits, left_patients = len(visits), int(visits["patient_id"].nunique())
        self.steps.append(
            {
                "rule": rule,
                "visits_removed": self.visits - left_visits,
                "patients_removed": self.patients - left_patients,
                "visits": left_visits,
                "patients": left_patients,
            }
        )
        self.visits, self.patients = left_visits, left_patients
        if left_visits == 0:
            raise empty_cohort(self.steps)


def empty_cohort(steps: list[dict[str, Any]]) -> LeaderError:
    """The error for an empty cohort: the rule that emptied it and the funnel up to it."""
    rule = steps[-1]["rule"]
    lines = []
    for step in steps:
        removed = (
            f"-{step['visits_removed']} visits, -{step['patients_removed']} patients -> "
            if "visits_removed" in step
            else ""
        )
        lines.append(
            f"  {step['rule']}: {removed}{step['visits']} visits, {step['patients']} patients"
        )
    what = (
        "no visits were read"
        if len(steps) == 1
        else f"the rule '{rule}' removed every remaining visit"
    )
    return LeaderError(
        f"{what}; the cohort is empty. Funnel up to this rule:\n"
        + "\n".join(lines)
        + "\nCheck the input tables and options named by this rule."
    )


def isin(values: pd.Series, allowed: pd.Series | list[str] | set[str]) -> np.ndarray:
    """Vectorised membership test for string columns (pandas' isin is slow on Arrow strings)."""
    value_set = pa.array(
        sorted(allowed)
        if isinstance(allowed, set)
        else pd.Series(allowed, dtype="string[pyarrow]"),
        pa.string(),
    )
    array = pa.array(values.astype("string[pyarrow]"), pa.string())
    return np.asarray(pc.is_in(array, value_set=value_set).to_numpy(zero_copy_only=False))


def code_lists(
    visit_ids: pd.Series, row_visits: pd.Series, row_codes: pd.Series
) -> list[list[str]]:
    """For each id in ``visit_ids``, its codes in row order (rows: visit id, code)."""
    position = pd.Index(visit_ids.astype(str)).get_indexer(row_visits.astype(str))
    order = np.argsort(position, kind="stable")
    sorted_codes = np.asarray(row_codes.astype(str).to_numpy(dtype=object))[order]
    counts = np.bincount(position[position >= 0], minlength=len(visit_ids))
    # position -1 (a row whose visit is not listed) sorts first: skip those rows.
    start = int((position < 0).sum())
    bounds = np.cumsum(counts)[:-1] + start
    return [chunk.tolist() for chunk in np.split(sorted_codes[start:], bounds - start)]


def top_codes(codes: pd.DataFrame, kind: str, k: int | None) -> list[str]:
    """Codes of ``kind`` by visit frequency, ties by code ascending; the first ``k``."""
    of_kind = codes.loc[codes["kind"] == kind, "code"]
    counts = of_kind.value_counts().rename_axis("code").reset_index(name="visits")
    counts = counts.sort_values(["visits", "code"], ascending=[False, True], kind="stable")
    ranked = counts["code"].astype(str).tolist()
    return ranked if k is None else ranked[:k]


def split_patients(
    patients: list[str], shares: tuple[float, float, float], seed: int
) -> dict[str, list[str]]:
    """Seeded shuffle of the sorted patient ids, cut by the shares (rest to test)."""
    rng = np.random.default_rng(seed)
    ordered = sorted(patients)
    shuffled = [ordered[i] for i in rng.permutation(len(ordered))]
    total = sum(shares)
    n_train = int(len(shuffled) * shares[0] / total)
    n_val = int(len(shuffled) * shares[1] / total)
    return {
        "train": shuffled[:n_train],
        "val": shuffled[n_train : n_train + n_val],
        "test": shuffled[n_train + n_val :],
    }


def build(
    raw: RawCohort,
    options: CohortOptions,
    progress: Callable[[str], None] = lambda _: None,
) -> VisitDataset:
    """Apply rules 4-9 of the recipe and assemble the dataset (not yet written)."""
    visits = raw.visits.sort_values(["patient_id", "time", "visit_id"], kind="stable")
    read = isin(raw.codes["visit_id"], visits["visit_id"])
    # Code rows of a visit that is unknown or that a reader's rule dropped (few: cheap).
    outside = raw.codes.loc[~read, "kind"].value_counts()
    for kind in KINDS:
        raw.counts[f"{kind}_rows_outside_read_visits"] = int(outside.get(kind, 0))
    codes = raw.codes[read]
    funnel = Funnel(visits, raw.funnel)

    progress("top-k codes")
    limits = {
        "medication": options.top_med,
        "diagnosis": options.top_diag,
        "procedure": options.top_proc,
    }
    vocab_codes: dict[str, list[str]] = {}
    top_k_report: dict[str, dict[str, int]] = {}
    kept_parts = []
    for kind in KINDS:
        ranked_all = top_codes(codes, kind, None)
        kept = ranked_all if limits[kind] is None else ranked_all[: limits[kind]]
        of_kind = codes[codes["kind"] == kind]
        in_top = isin(of_kind["code"], set(kept))
        kept_parts.append(of_kind[in_top])
        top_k_report[kind] = {
            "codes_seen": len(ranked_all),
            "codes_kept": len(kept),
            "occurrences_removed": int((~in_top).sum()),
        }
    codes = pd.concat(kept_parts, ignore_index=True)

    for kind in KINDS:
        visits = visits[isin(visits["visit_id"], codes.loc[codes["kind"] == kind, "visit_id"])]
        funnel.record(f"visit has no {kind} (after top-k)", visits)

    per_patient = visits.groupby("patient_id")["visit_id"].transform("size")
    visits = visits[per_patient >= options.min_visits]
    funnel.record(f"patient has fewer than {options.min_visits} kept visits", visits)

    progress("assembling visits")
    codes = codes[isin(codes["visit_id"], visits["visit_id"])]
    table = visits[["patient_id", "visit_id", "time"]].reset_index(drop=True)
    for kind, column in KIND_COLUMNS.items():
        of_kind = codes[codes["kind"] == kind]
        table[column] = code_lists(table["visit_id"], of_kind["visit_id"], of_kind["code"])
        # Vocabulary order = frequency rank among the kept visits, ties by code.
        vocab_codes[kind] = top_codes(of_kind, kind, None)

    profiles = _profiles(raw, table)
    patients = sorted(table["patient_id"].unique().tolist())
    splits = split_patients(patients, options.split, options.seed)
    vocab = Vocabulary(
        codes=vocab_codes,
        names={
            k: {c: n for c, n in raw.names.get(k, {}).items() if c in set(vocab_codes[k])}
            for k in KINDS
        },
    )
    known = set(vocab_codes["medication"])
    ddi_pairs = sorted(
        {
            tuple(sorted(p))
            for p in raw.ddi_pairs
            if p[0] in known and p[1] in known and p[0] != p[1]
        }
    )
    stats = _stats(table, vocab, raw, funnel, top_k_report, splits, len(ddi_pairs))
    stats["visit_time_kind"] = raw.time_kind
    manifest = {
        "source": raw.source,
        "visit_time_kind": raw.time_kind,
        "tool": f"leader {__version__}",
        "options": {**raw.options, **asdict(options)},
        "inputs": {str(p): file_checksum(p) for p in raw.inputs},
    }
    return VisitDataset(
        visits=table,
        profiles=profiles,
        vocab=vocab,
        splits=splits,
        ddi_pairs=[(a, b) for a, b in ddi_pairs],
        ddi_source=raw.ddi_source,
        stats=stats,
        manifest=manifest,
    )


def _profiles(raw: RawCohort, table: pd.DataFrame) -> pd.DataFrame:
    patients = pd.DataFrame({"patient_id": sorted(table["patient_id"].unique())})
    if raw.visit_profiles is not None:
        first_visit = table.drop_duplicates("patient_id", keep="first")[["patient_id", "visit_id"]]
        fields = first_visit.merge(raw.visit_profiles, on="visit_id", how="left")
        profiles = patients.merge(fields.drop(columns="visit_id"), on="patient_id", how="left")
    elif raw.patient_profiles is not None:
        profiles = patients.merge(raw.patient_profiles, on="patient_id", how="left")
    else:
        profiles = patients
    for column in profiles.columns:
        if column != "patient_id":
            values = profiles[column].astype("string").str.strip()
            profiles[column] = values.mask(values.isna() | (values == ""), UNKNOWN).astype(str)
    return profiles


def _stats(
    table: pd.DataFrame,
    vocab: Vocabulary,
    raw: RawCohort,
    funnel: Funnel,
    top_k: dict[str, dict[str, int]],
    splits: dict[str, list[str]],
    ddi_pairs: int,
) -> dict[str, Any]:
    visits_per_patient = table.groupby("patient_id").size()
    return {
        "patients": int(len(visits_per_patient)),
        "visits": int(len(table)),
        "single_visit_patients": int((visits_per_patient == 1).sum()),
        "multi_visit_patients": int((visits_per_patient > 1).sum()),
        "max_visits_per_patient": int(visits_per_patient.max()),
        "diagnosis_codes": vocab.size("diagnosis"),
        "procedure_codes": vocab.size("procedure"),
        "medication_codes": vocab.size("medication"),
        "mean_diagnoses_per_visit": round(float(table["diagnoses"].map(len).mean()), 4),
        "mean_procedures_per_visit": round(float(table["procedures"].map(len).mean()), 4),
        "mean_medications_per_visit": round(float(table["medications"].map(len).mean()), 4),
        "ddi_pairs": ddi_pairs,
        "split_patients": {k: len(v) for k, v in splits.items()},
        **raw.counts,
        "top_k": top_k,
        "funnel": funnel.steps,
    }
