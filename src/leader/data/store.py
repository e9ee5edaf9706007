"""The dataset directory written by ``leader prepare`` and read by every model.

Layout (DESIGN.md): ``visits.parquet``, ``profiles.parquet``, ``vocab.json``,
``splits.json``, ``ddi.json``, ``stats.json``, ``manifest.json``. All open formats.
Optional: ``molecules.json`` (``{"source": ..., "smiles": {drug: [SMILES, ...]}}``), the
molecules of the vocabulary's drugs for SafeDrug / MoleRec (``leader prepare --smiles``).

>>> ds = VisitDataset.load("data/mimic3")                     # doctest: +SKIP
>>> train = ds.samples("train")                                # doctest: +SKIP
>>> y = ds.vocab.multi_hot("medication", train[0].current.medications)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from leader.errors import LeaderError
from leader.io import atomic_dir, write_json
from leader.io import write_json_atomic as write_json_atomic  # re-exported

KINDS: tuple[str, ...] = ("diagnosis", "procedure", "medication")
# Column of visits.parquet holding each kind's codes.
KIND_COLUMNS: dict[str, str] = {
    "diagnosis": "diagnoses",
    "procedure": "procedures",
    "medication": "medications",
}
SPLITS: tuple[str, ...] = ("train", "val", "test")
SampleMode = Literal["all", "last"]
UNKNOWN = "unknown"

FILES = (
    "visits.parquet",
    "profiles.parquet",
    "vocab.json",
    "splits.json",
    "ddi.json",
    "stats.json",
    "manifest.json",
)
MOLECULES_FILE = "molecules.json"  # optional


@dataclass(frozen=True)
class Visit:
    """One hospital visit: codes of each kind in first-seen order."""

    visit_id: str
    time: str | None
    diagnoses: tuple[str, ...]
    procedures: tuple[str, ...]
    medications: tuple[str, ...]

    def codes(self, kind: str) -> tuple[str, ...]:
        return getattr(self, KIND_COLUMNS[kind])  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Sample:
    """A visit to recommend for: the current visit, earlier visits (oldest first), profile.

    The target is ``current.medications``; models must not read it as an input.
    """

    sample_id: str
    patient_id: str
    history: tuple[Visit, ...]
    current: Visit
    profile: dict[str, str] = field(default_factory=dict)

    @property
    def is_single_visit(self) -> bool:
        """True for a first-time patient (no earlier visit): the paper's 'single-visit'."""
        return len(self.history) == 0


@dataclass
class Vocabulary:
    """Code lists per kind (index = position) and names where known."""

    codes: dict[str, list[str]]
    names: dict[str, dict[str, str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for kind in KINDS:
            self.codes.setdefault(kind, [])
            self.names.setdefault(kind, {})

    @cached_property
    def _index(self) -> dict[str, dict[str, int]]:
        return {kind: {c: i for i, c in enumerate(codes)} for kind, codes in self.codes.items()}

    def size(self, kind: str) -> int:
        return len(self.codes[kind])

    def index(self, kind: str) -> dict[str, int]:
        """Mapping code -> position for ``kind``."""
        return self._index[kind]

    def name(self, kind: str, code: str) -> str:
        """The code's name, or the code itself when no name is known."""
        return self.names[kind].get(code) or code

    def encode(self, kind: str, codes: Iterable[str]) -> list[int]:
        """Positions of the known codes, in order; unknown codes are skipped."""
        index = self._index[kind]
        return [index[c] for c in codes if c in index]

    def multi_hot(self, kind: str, codes: Iterable[str]) -> np.ndarray:
        vector = np.zeros(self.size(kind), dtype=np.float32)
        vector[self.encode(kind, codes)] = 1.0
        return vector

    def to_json(self) -> dict[str, Any]:
        return {
            kind: {
                "codes": list(self.codes[kind]),
                "names": {
                    c: self.names[kind][c] for c in self.codes[kind] if c in self.names[kind]
                },
            }
            for kind in KINDS
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Vocabulary:
        return cls(
            codes={k: list(data[k]["codes"]) for k in KINDS},
            names={k: dict(data[k].get("names", {})) for k in KINDS},
        )


@dataclass
class VisitDataset:
    """A prepared cohort: kept visits, profiles, vocabularies, splits and DDI pairs."""

    # patient_id, visit_id, time (naive UTC datetime, or a number: stats' visit_time_kind),
    # diagnoses, procedures, medications
    visits: pd.DataFrame
    profiles: pd.DataFrame  # patient_id + categorical fields (strings)
    vocab: Vocabulary
    splits: dict[str, list[str]]
    ddi_pairs: list[tuple[str, str]] = field(default_factory=list)
    ddi_source: str = "none"
    stats: dict[str, Any] = field(default_factory=dict)
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    molecules: dict[str, list[str]] = field(default_factory=dict)  # drug -> SMILES
    molecule_source: str | None = None  # the file the SMILES came from

    # ---------------------------------------------------------------- reading / writing
    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> VisitDataset:
        root = Path(path)
        if not root.is_dir():
            raise LeaderError(
                f"{root}: no dataset directory here; create one with `leader prepare`"
            )
        missing = [f for f in FILES if not (root / f).exists()]
        if missing:
            raise LeaderError(
                f"{root}: not a complete dataset directory, missing {', '.join(missing)}; "
                "run `leader prepare` again"
            )
        visits = pq.read_table(root / "visits.parquet").to_pandas()
        for column in KIND_COLUMNS.values():
            visits[column] = visits[column].map(lambda codes: [str(c) for c in codes])
        visits["patient_id"] = visits["patient_id"].astype(str)
        visits["visit_id"] = visits["visit_id"].astype(str)
        profiles = pq.read_table(root / "profiles.parquet").to_pandas()
        profiles["patient_id"] = profiles["patient_id"].astype(str)
        ddi = _read_json(root / "ddi.json")
        molecules = _read_json(root / MOLECULES_FILE) if (root / MOLECULES_FILE).exists() else {}
        return cls(
            visits=visits,
            profiles=profiles,
            vocab=Vocabulary.from_json(_read_json(root / "vocab.json")),
            splits={k: [str(p) for p in v] for k, v in _read_json(root / "splits.json").items()},
            ddi_pairs=[(str(a), str(b)) for a, b in ddi.get("pairs", [])],
            ddi_source=str(ddi.get("source", "none")),
            stats=_read_json(root / "stats.json"),
            manifest=_read_json(root / "manifest.json"),
            path=root,
            molecules={str(k): [str(s) for s in v] for k, v in molecules.get("smiles", {}).items()},
            molecule_source=molecules.get("source"),
        )

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the directory atomically: a temporary sibling renamed into place."""
        root = Path(path)
        with atomic_dir(root) as tmp:
            _write_visits(self.visits, tmp / "visits.parquet")
            _write_plain(self.profiles.astype(str), tmp / "profiles.parquet")
            write_json(tmp / "vocab.json", self.vocab.to_json())
            write_json(tmp / "splits.json", self.splits)
            write_json(
                tmp / "ddi.json",
                {"source": self.ddi_source, "pairs": [list(p) for p in self.ddi_pairs]},
            )
            write_json(tmp / "stats.json", self.stats)
            write_json(tmp / "manifest.json", self.manifest)
            if self.molecules:
                write_json(tmp / MOLECULES_FILE, self.molecules_json())
        self.path = root
        return root

    def molecules_json(self) -> dict[str, Any]:
        return {"source": self.molecule_source, "smiles": self.molecules}

    def set_molecules(self, smiles_by_drug: dict[str, list[str]], source: str) -> None:
        """Keep the SMILES of the vocabulary's drugs; write them when the dataset is on disk."""
        drugs = self.vocab.codes["medication"]
        self.molecules = {d: list(smiles_by_drug[d]) for d in drugs if smiles_by_drug.get(d)}
        self.molecule_source = source
        if self.path is not None:
            write_json_atomic(self.path / MOLECULES_FILE, self.molecules_json())

    # ---------------------------------------------------------------- derived views
    @property
    def default_sample_mode(self) -> SampleMode:
        mode = self.manifest.get("options", {}).get("samples", "all")
        return "last" if mode == "last" else "all"

    def ddi_matrix(self) -> np.ndarray:
        """Symmetric 0/1 matrix (drugs, drugs) over the medication vocabulary."""
        index = self.vocab.index("medication")
        matrix = np.zeros((len(index), len(index)), dtype=np.int8)
        for a, b in self.ddi_pairs:
            if a in index and b in index and a != b:
                matrix[index[a], index[b]] = matrix[index[b], index[a]] = 1
        return matrix

    def profile_of(self, patient_id: str) -> dict[str, str]:
        return self._profiles_by_patient.get(patient_id, {})

    @cached_property
    def _profiles_by_patient(self) -> dict[str, dict[str, str]]:
        fields = [c for c in self.profiles.columns if c != "patient_id"]
        out: dict[str, dict[str, str]] = {}
        for row in self.profiles.itertuples(index=False):
            record = row._asdict()
            out[str(record["patient_id"])] = {
                f: (UNKNOWN if _missing(record[f]) else str(record[f])) for f in fields
            }
        return out

    @cached_property
    def _visits_by_patient(self) -> dict[str, list[Visit]]:
        ordered = self.visits.sort_values(["patient_id", "time", "visit_id"], kind="stable")
        out: dict[str, list[Visit]] = {}
        for pid, vid, time, dx, px, rx in zip(
            ordered["patient_id"],
            ordered["visit_id"],
            ordered["time"],
            ordered["diagnoses"],
            ordered["procedures"],
            ordered["medications"],
            strict=True,
        ):
            out.setdefault(pid, []).append(
                Visit(
                    visit_id=vid,
                    time=None if _missing(time) else str(time),
                    diagnoses=tuple(dx),
                    procedures=tuple(px),
                    medications=tuple(rx),
                )
            )
        return out

    def patient_visits(self, patient_id: str) -> list[Visit]:
        return list(self._visits_by_patient.get(patient_id, []))

    def samples(self, split: str | None = None, mode: SampleMode | None = None) -> list[Sample]:
        """Samples of one split (or all patients when ``split`` is None).

        ``mode="all"``: every kept visit is a sample (GAMENet/SafeDrug protocol);
        ``mode="last"``: only each patient's last visit (LEADER's code). Order is stable:
        patients in split order, visits in time order.
        """
        mode = mode or self.default_sample_mode
        if split is not None and split not in self.splits:
            raise LeaderError(f"unknown split {split!r}; this dataset has {sorted(self.splits)}")
        patients: Sequence[str] = (
            self.splits[split] if split is not None else sorted(self._visits_by_patient)
        )
        out: list[Sample] = []
        for pid in patients:
            visits = self._visits_by_patient.get(pid, [])
            positions = range(len(visits)) if mode == "all" else range(len(visits) - 1, len(visits))
            profile = self.profile_of(pid)
            for t in positions:
                out.append(
                    Sample(
                        sample_id=f"{pid}:{visits[t].visit_id}",
                        patient_id=pid,
                        history=tuple(visits[:t]),
                        current=visits[t],
                        profile=profile,
                    )
                )
        return out

    def targets(self, samples: Sequence[Sample]) -> np.ndarray:
        """Multi-hot medication targets, shape (samples, drugs)."""
        out = np.zeros((len(samples), self.vocab.size("medication")), dtype=np.float32)
        index = self.vocab.index("medication")
        for row, sample in enumerate(samples):
            out[row, [index[c] for c in sample.current.medications if c in index]] = 1.0
        return out


def _write_visits(visits: pd.DataFrame, path: Path) -> None:
    """Plain Arrow types (no pandas metadata), so any Parquet reader gets the same table."""
    table = pa.table(
        {
            "patient_id": pa.array(visits["patient_id"].astype(str).tolist(), pa.string()),
            "visit_id": pa.array(visits["visit_id"].astype(str).tolist(), pa.string()),
            "time": _time_array(visits["time"]),
            **{
                column: pa.array(
                    [[str(c) for c in codes] for codes in visits[column]], pa.list_(pa.string())
                )
                for column in KIND_COLUMNS.values()
            },
        }
    )
    pq.write_table(table, path)


def _time_array(times: pd.Series) -> pa.Array:
    """Numbers stay numbers (int64 or float64); dates become naive UTC timestamps (us)."""
    if pd.api.types.is_numeric_dtype(times) and not pd.api.types.is_bool_dtype(times):
        values = pd.to_numeric(times)
        if pd.api.types.is_integer_dtype(values.dtype):
            return pa.array(values.astype("Int64"), pa.int64())
        return pa.array(values.astype("float64"), pa.float64())
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        times = times.dt.tz_convert("UTC").dt.tz_localize(None)
    return pa.array(pd.to_datetime(times).astype("datetime64[us]"), pa.timestamp("us"))


def _write_plain(frame: pd.DataFrame, path: Path) -> None:
    table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
    pq.write_table(table, path)


def _missing(value: object) -> bool:
    if value is None:
        return True
    try:
        return bool(pd.isna(value))  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return False


def _read_json(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise LeaderError(f"{path}: not valid JSON ({exc}); run `leader prepare` again") from exc


