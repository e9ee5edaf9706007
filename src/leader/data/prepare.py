"""``leader prepare``: raw tables -> the dataset directory, for each source.

>>> ds = prepare_mimic3("mimic-iii-demo", "resources", "data/mimic3",
...                     ddi="resources/ddi_atc3_pairs.csv")          # doctest: +SKIP
>>> ds.stats["patients"]                                              # doctest: +SKIP

Sources: ``mimic3``, ``mimic4``, ``eicu``, ``omop``, ``fhir`` and the generic ``events`` table.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from leader.data.codes import read_atc_names
from leader.data.cohort import CohortOptions, RawCohort, build
from leader.data.ddi import read_pairs, twosides_pairs
from leader.data.store import VisitDataset
from leader.errors import LeaderError

PathLike = str | os.PathLike[str]
Progress = Callable[[str], None]


def _finish(
    raw: RawCohort,
    out: PathLike,
    options: CohortOptions,
    ddi: PathLike | None,
    twosides: PathLike | None,
    drug_atc: PathLike | None,
    ddi_side_effects: int,
    atc_names: PathLike | None,
    progress: Progress,
) -> VisitDataset:
    progress("drug interactions")
    if ddi is not None and twosides is not None:
        raise LeaderError("give either --ddi (pairs) or --twosides (drug-DDI.csv), not both")
    if ddi is not None:
        raw.ddi_pairs, raw.ddi_source = read_pairs(Path(ddi)), Path(ddi).name
        raw.inputs.append(Path(ddi))
    elif twosides is not None:
        if drug_atc is None:
            raise LeaderError("--twosides needs --drug-atc FILE (drug-atc.csv: CID -> ATC)")
        raw.ddi_pairs = twosides_pairs(Path(twosides), Path(drug_atc), ddi_side_effects)
        raw.ddi_source = f"TWOSIDES ({Path(twosides).name}, {ddi_side_effects} rarest side effects)"
        raw.inputs += [Path(twosides), Path(drug_atc)]
    if atc_names is not None:
        raw.names["medication"] = {
            **raw.names.get("medication", {}),
            **read_atc_names(Path(atc_names)),
        }
        raw.inputs.append(Path(atc_names))
    dataset = build(raw, options, progress)
    progress("writing")
    dataset.save(out)
    return dataset


def prepare_mimic3(
    data: PathLike,
    resources: PathLike,
    out: PathLike,
    *,
    ndc_maps: Sequence[PathLike] = (),
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """MIMIC-III tables in ``data`` + drug-code ``resources`` -> dataset directory ``out``."""
    from leader.data.sources.mimic3 import read_mimic3

    progress("reading MIMIC-III tables")
    raw = read_mimic3(Path(data), Path(resources), [Path(p) for p in ndc_maps])
    raw.options = {"data": str(data), "resources": str(resources)}
    return _finish(
        raw,
        out,
        CohortOptions(**options),
        ddi,
        twosides,
        drug_atc,
        ddi_side_effects,
        atc_names,
        progress,
    )


def prepare_mimic4(
    data: PathLike,
    resources: PathLike,
    out: PathLike,
    *,
    ndc_maps: Sequence[PathLike] = (),
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    patient_fraction: float = 1.0,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """MIMIC-IV ``hosp/`` tables in ``data`` -> dataset directory ``out``."""
    from leader.data.sources.mimic4 import read_mimic4

    progress("reading MIMIC-IV tables")
    cohort_options = CohortOptions(**options)
    raw = read_mimic4(
        Path(data),
        Path(resources),
        [Path(p) for p in ndc_maps],
        patient_fraction,
        cohort_options.seed,
    )
    raw.options = {
        "data": str(data),
        "resources": str(resources),
        "patient_fraction": patient_fraction,
    }
    return _finish(
        raw, out, cohort_options, ddi, twosides, drug_atc, ddi_side_effects, atc_names, progress
    )


def prepare_events(
    events: PathLike,
    out: PathLike,
    *,
    profiles: PathLike | None = None,
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """A generic event table (DESIGN.md) + optional profile table -> dataset directory."""
    from leader.data.sources.events import read_events

    progress("reading events")
    raw = read_events(Path(events), Path(profiles) if profiles is not None else None)
    raw.options = {"events": str(events), "profiles": str(profiles) if profiles else None}
    return _finish(
        raw,
        out,
        CohortOptions(**options),
        ddi,
        twosides,
        drug_atc,
        ddi_side_effects,
        atc_names,
        progress,
    )


def prepare_eicu(
    data: PathLike,
    out: PathLike,
    *,
    drug_map: PathLike | None = None,
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """eICU-CRD v2.0 (or its demo) tables in ``data`` -> dataset directory ``out``."""
    from leader.data.sources.eicu import read_eicu

    progress("reading eICU tables")
    raw = read_eicu(Path(data), Path(drug_map) if drug_map is not None else None)
    raw.options = {"data": str(data), "drug_map": str(drug_map) if drug_map else None}
    return _finish(
        raw,
        out,
        CohortOptions(**options),
        ddi,
        twosides,
        drug_atc,
        ddi_side_effects,
        atc_names,
        progress,
    )


def prepare_omop(
    out: PathLike,
    *,
    data: PathLike | None = None,
    db: str | None = None,
    schema: str | None = None,
    drug_level: str = "concept",
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """OMOP CDM 5.3 / 5.4 tables (a folder ``data`` or a database URL ``db``) -> ``out``."""
    from leader.data.sources.omop import read_omop
    from leader.data.sources.omop_tables import DatabaseTables, FileTables, OmopTables

    if (data is None) == (db is None):
        raise LeaderError("prepare omop needs exactly one of --data DIR or --db URL")
    tables: OmopTables
    if db is not None:
        tables = DatabaseTables(db, schema)
    else:
        assert data is not None
        tables = FileTables(Path(data))
    progress(f"reading OMOP tables from {tables.description}")
    raw = read_omop(tables, drug_level)
    raw.options = {
        "data": str(data) if data is not None else None,
        "db": tables.description if db is not None else None,
        "drug_level": drug_level,
    }
    return _finish(
        raw,
        out,
        CohortOptions(**options),
        ddi,
        twosides,
        drug_atc,
        ddi_side_effects,
        atc_names,
        progress,
    )


def prepare_fhir(
    data: PathLike,
    out: PathLike,
    *,
    diagnosis_system: str = "icd9,icd10,snomed",
    procedure_system: str = "icd9,icd10pcs,cpt,snomed",
    drug_system: str | None = None,
    drug_level: str = "rxnorm",
    resources: PathLike | None = None,
    drug_map: PathLike | None = None,
    validate: bool = False,
    ddi: PathLike | None = None,
    twosides: PathLike | None = None,
    drug_atc: PathLike | None = None,
    ddi_side_effects: int = 40,
    atc_names: PathLike | None = None,
    progress: Progress = lambda _: None,
    **options: Any,
) -> VisitDataset:
    """FHIR R4 Bulk Data NDJSON or Bundles (a file or a folder) -> dataset directory ``out``."""
    from leader.data.sources.fhir import read_fhir

    progress("reading FHIR resources")
    raw = read_fhir(
        Path(data),
        diagnosis_system=diagnosis_system,
        procedure_system=procedure_system,
        drug_system=drug_system,
        drug_level=drug_level,
        resources=Path(resources) if resources is not None else None,
        drug_map=Path(drug_map) if drug_map is not None else None,
        validate=validate,
    )
    raw.options = {
        "data": str(data),
        "diagnosis_system": diagnosis_system,
        "procedure_system": procedure_system,
        "drug_system": drug_system,
        "drug_level": drug_level,
        "resources": str(resources) if resources is not None else None,
        "drug_map": str(drug_map) if drug_map is not None else None,
        "validate": validate,
    }
    return _finish(
        raw,
        out,
        CohortOptions(**options),
        ddi,
        twosides,
        drug_atc,
        ddi_side_effects,
        atc_names,
        progress,
    )
