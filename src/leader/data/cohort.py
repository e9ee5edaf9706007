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
    # The paper's cohort (leader.protocol): patients with at least N distinct admissions in
    # the prescriptions table, counted before the join with diagnoses and procedures (0 = off)
    min_prescribed_admissions: int = 0
    profile_fields: tuple[str, ...] | None = None  # profile columns kept; None = all given
    require_smiles: str | None = None  # keep only drugs with a SMILES in this atc3,smiles CSV

    def __post_init__(self) -> None:
        if self.profile_fields is not None:
            self.profile_fields = tuple(self.profile_fields)
        if self.min_prescribed_admissions < 0:
            raise LeaderError(
                f"--min-prescribed-admissions must be >= 0, got {self.min_prescribed_admissions}"
            )
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
    # Visit ids of the prescription rows with a drug code, before mapping (MIMIC readers);
    # None: the medication rows of ``codes`` stand in (generic events).
    prescribed_visits: pd.Series | None = None
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
    if options.min_prescribed_admissions > 0:
        visits = prescribed_patients(raw, visits, options.min_prescribed_admissions)
        funnel.record(
            f"patient has fewer than {options.min_prescribed_admissions} admissions "
            "in the prescriptions table (before the join)",
            visits,
        )
        codes = codes[isin(codes["visit_id"], visits["visit_id"])]
    with_smiles = smiles_codes(Path(options.require_smiles)) if options.require_smiles else None

    progress("top-k codes")
    limits = {
        "medication": options.top_med,
        "diagnosis": options.top_diag,
        "procedure": options.top_proc,
    }
    vocab_codes: dict[str, list[str]] = {}
    top_k_report: dict[str, dict[str, int]] = {}
    kept_parts = []
    without_smiles: list[str] = []
    for kind in KINDS:
        ranked_all = top_codes(codes, kind, None)
        kept = ranked_all if limits[kind] is None else ranked_all[: limits[kind]]
        if kind == "medication" and with_smiles is not None:
            # After the top-k cut, as SafeDrug's recipe (so fewer than top_med drugs remain).
            without_smiles = [c for c in kept if c not in with_smiles]
            kept = [c for c in kept if c in with_smiles]
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

    profiles = _profiles(raw, table, options.profile_fields)
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
    if with_smiles is not None:
        stats["drugs_without_smiles"] = without_smiles  # top-k drugs dropped for no SMILES
    manifest = {
        "source": raw.source,
        "visit_time_kind": raw.time_kind,
        "tool": f"leader {__version__}",
        "options": {**raw.options, **asdict(options)},
        "inputs": {
            str(p): file_checksum(p)
            for p in [
                *raw.inputs,
                *([Path(options.require_smiles)] if options.require_smiles else []),
            ]
        },
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


def prescribed_patients(raw: RawCohort, visits: pd.DataFrame, minimum: int) -> pd.DataFrame:
    """Visits of the patients with >= ``minimum`` distinct admissions holding a prescription.

    Counted on the prescription rows as read (an admission whose drugs later fail to map,
    or that has no diagnosis or procedure, still counts): the authors' order of operations.
    """
    if raw.prescribed_visits is not None:
        prescribed = raw.prescribed_visits.astype("string").dropna().unique()
    else:
        prescribed = raw.codes.loc[raw.codes["kind"] == "medication", "visit_id"].unique()
    with_drugs = visits[isin(visits["visit_id"], {str(v) for v in prescribed})]
    admissions = with_drugs.groupby("patient_id")["visit_id"].nunique()
    kept = {str(p) for p in admissions.index[admissions >= minimum]}
    return visits[isin(visits["patient_id"], kept)]


def smiles_codes(path: Path) -> set[str]:
    """Drug codes with at least one non-empty SMILES in an ``atc3,smiles`` CSV."""
    if not path.is_file():
        raise LeaderError(f"{path}: no such SMILES file (--require-smiles; columns atc3,smiles)")
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in ("atc3", "smiles") if c not in frame.columns]
    if missing:
        raise LeaderError(
            f"{path}: column(s) {', '.join(missing)} missing (found: "
            f"{', '.join(map(str, frame.columns))}); a SMILES file has columns atc3,smiles"
        )
    codes, smiles = frame["atc3"].str.strip(), frame["smiles"].str.strip()
    return set(codes[(codes != "") & (smiles != "")])


def _profiles(
    raw: RawCohort, table: pd.DataFrame, keep: tuple[str, ...] | None = None
) -> pd.DataFrame:
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
    if keep is not None:
        absent = [f for f in keep if f not in profiles.columns]
        if absent:
            given = [c for c in profiles.columns if c != "patient_id"]
            raise LeaderError(
                f"profile field(s) {', '.join(absent)} not given by the {raw.source} source "
                f"(it gives: {', '.join(given) or 'none'}); fix --profile-fields"
            )
        profiles = profiles[["patient_id", *keep]]
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
