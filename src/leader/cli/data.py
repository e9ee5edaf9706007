"""``leader prepare mimic3|mimic4|eicu|omop|fhir|events`` and ``leader stats``."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Annotated, Any

import typer

prepare_app = typer.Typer(
    help="Turn raw EHR tables into a dataset directory (visits, vocabularies, splits, DDI).",
    no_args_is_help=True,
)

Out = Annotated[Path, typer.Option("--out", help="Dataset directory to write.")]
NdcMap = Annotated[
    list[Path] | None,
    typer.Option("--ndc-map", help="Extra NDC map (columns NDC and ATC4 or ATC3), repeatable."),
]
Ddi = Annotated[Path | None, typer.Option(help="DDI pairs CSV (atc3_a,atc3_b).")]
Twosides = Annotated[
    Path | None, typer.Option(help="TWOSIDES drug-DDI.csv (GAMENet recipe; needs --drug-atc).")
]
DrugAtc = Annotated[Path | None, typer.Option(help="drug-atc.csv: PubChem CID -> ATC codes.")]
SideEffects = Annotated[
    int, typer.Option(help="TWOSIDES recipe: keep the N least frequent side effects.")
]
AtcNames = Annotated[Path | None, typer.Option(help="ATC names CSV (atc_code,atc_name).")]
TopMed = Annotated[int, typer.Option(help="Keep the K most frequent drugs (0 = all).")]
TopDiag = Annotated[int, typer.Option(help="Keep the K most frequent diagnoses (0 = all).")]
TopProc = Annotated[int, typer.Option(help="Keep the K most frequent procedures (0 = all).")]
MinVisits = Annotated[int, typer.Option(help="Drop patients with fewer kept visits.")]
Split = Annotated[str, typer.Option(help="Train:val:test shares by patient, e.g. 8:1:1.")]
Seed = Annotated[int, typer.Option(help="Seed of the patient shuffle.")]
Samples = Annotated[
    str | None, typer.Option(help="Default samples: 'all' visits or 'last' only [all].")
]
Protocol = Annotated[
    str,
    typer.Option(
        help="default, or paper: the LEADER paper's cohort (>= 2 admissions in the "
        "prescriptions table before the join, five profile fields, drugs with a SMILES, "
        "last visits; MIMIC-IV: 15% of patients, top 1000 procedures). Flags given win."
    ),
]
MinPrescribed = Annotated[
    int | None,
    typer.Option(
        help="Keep patients with at least N distinct admissions in the prescriptions "
        "table, counted before the join (paper: 2; 0 = off) [0]."
    ),
]
ProfileFields = Annotated[
    str | None,
    typer.Option(help="Comma-separated profile fields to keep (paper: the source's five) [all]."),
]
RequireSmiles = Annotated[
    Path | None,
    typer.Option(
        help="Keep only drugs with a SMILES in this atc3,smiles CSV "
        "(paper: RESOURCES/atc3_smiles.csv)."
    ),
]
Smiles = Annotated[
    Path | None,
    typer.Option(
        help="CSV drug,smiles (columns atc3 or drug, and smiles): the molecules of the "
        "vocabulary's drugs are stored in the dataset for SafeDrug / MoleRec (MIMIC: "
        "RESOURCES/atc3_smiles.csv is used when the drugs are ATC3 classes)."
    ),
]
ATC3 = re.compile(r"^[A-Z][0-9]{2}[A-Z]$")


# Reader counters that record rows or visits set aside, printed after the funnel.
DROP_WORDS: tuple[str, ...] = (
    "without",
    "unmapped",
    "cancelled",
    "duplicate",
    "empty",
    "not_icd9",
    "unknown_kind",
    "dated_from",
    "another_person",
    "missing_order",
    "outside_read_visits",
    "not_found",  # FHIR: a reference to a resource the export lacks
    "in_error",  # FHIR statuses: entered-in-error, refuted, not-done, not-taken
    "refuted",
    "not_done",
    "not_taken",
    "invalid",
)


def _cohort_options(
    top_med: int,
    top_diag: int,
    top_proc: int | None,
    min_visits: int,
    split: str,
    seed: int,
    samples: str | None,
    paper: tuple[int | None, str | None, Path | None] = (None, None, None),
    protocol: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """CohortOptions: defaults <- the protocol's (``protocol``) <- the flags given.

    ``paper``: the flags --min-prescribed-admissions, --profile-fields, --require-smiles.
    """
    from leader.errors import LeaderError

    try:
        shares = tuple(float(s) for s in split.replace(",", ":").split(":"))
    except ValueError as exc:
        raise LeaderError(f"--split must look like 8:1:1, got {split!r}") from exc
    if len(shares) != 3:
        raise LeaderError(f"--split needs three shares (train:val:test), got {split!r}")
    options: dict[str, Any] = {
        "top_med": top_med or None,
        "top_diag": top_diag or None,
        "min_visits": min_visits,
        "split": shares,
        "seed": seed,
        **(protocol or {}),
    }
    min_prescribed, profile_fields, require_smiles = paper
    given = {
        "top_proc": (top_proc or None) if top_proc is not None else None,
        "samples": samples,
        "min_prescribed_admissions": min_prescribed,
        "profile_fields": (
            tuple(f.strip() for f in profile_fields.split(",") if f.strip())
            if profile_fields is not None
            else None
        ),
        "require_smiles": str(require_smiles) if require_smiles is not None else None,
    }
    if top_proc == 0:  # an explicit 0 means all procedures, even under a protocol
        options["top_proc"] = None
    options.update({k: v for k, v in given.items() if v is not None})
    return options


def _protocol_options(
    protocol: str, source: str, resources: Path, require_smiles: Path | None
) -> dict[str, Any]:
    """The protocol's cohort options; an explicit --require-smiles stands in for the default."""
    from leader.protocol import check, cohort_defaults, paper_cohort

    if check(protocol) == "default":
        return {}
    if require_smiles is not None:
        return paper_cohort(source)
    return cohort_defaults(protocol, source, str(resources))


def read_smiles_table(path: Path) -> dict[str, list[str]]:
    """drug -> SMILES strings (file order) from a CSV with columns atc3 (or drug) and smiles."""
    from leader.errors import LeaderError

    if not path.is_file():
        raise LeaderError(f"{path}: no such SMILES file (expected columns atc3,smiles)")
    out: dict[str, list[str]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        key = "atc3" if "atc3" in columns else "drug"
        if key not in columns or "smiles" not in columns:
            raise LeaderError(
                f"{path}: columns atc3 (or drug) and smiles needed (found: {', '.join(columns)})"
            )
        for row in reader:
            drug, smiles = (row[key] or "").strip(), (row["smiles"] or "").strip()
            if drug and smiles:
                out.setdefault(drug, []).append(smiles)
    return out


def molecule_file(dataset: Any, smiles: Path | None, resources: Path | None) -> Path | None:
    """--smiles, else RESOURCES/atc3_smiles.csv when every drug code is an ATC3 class."""
    if smiles is not None:
        return smiles
    drugs = dataset.vocab.codes["medication"]
    shipped = resources / "atc3_smiles.csv" if resources is not None else None
    if shipped is not None and shipped.is_file() and drugs and all(ATC3.match(d) for d in drugs):
        return shipped
    return None


def _run(
    kind: str,
    out: Path,
    call: Any,
    smiles: Path | None = None,
    resources: Path | None = None,
) -> None:
    from rich.console import Console

    console = Console(stderr=True)
    with console.status(f"prepare {kind}") as status:
        dataset = call(lambda step: status.update(f"prepare {kind}: {step}"))
    source = molecule_file(dataset, smiles, resources)
    if source is not None:
        dataset.set_molecules(read_smiles_table(source), str(source))
        drugs = dataset.vocab.size("medication")
        console.print(
            f"molecules: {len(dataset.molecules)} of {drugs} drugs have SMILES in {source} "
            f"(stored in {out / 'molecules.json'})"
        )
    print_summary(dataset.stats, out)


def print_summary(stats: dict[str, Any], out: Path | None = None) -> None:
    """The cohort statistics and the funnel as two tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = Table(title=f"Cohort{f' ({out})' if out else ''}", show_header=False)
    for key in (
        "patients",
        "visits",
        "single_visit_patients",
        "multi_visit_patients",
        "diagnosis_codes",
        "procedure_codes",
        "medication_codes",
        "mean_diagnoses_per_visit",
        "mean_procedures_per_visit",
        "mean_medications_per_visit",
        "ddi_pairs",
        "prescription_rows",
        "mapped_share",
        "visit_time_kind",
    ):
        if key in stats:
            summary.add_row(key, str(stats[key]))
    console.print(summary)
    funnel = Table(title="Funnel: what each rule removed")
    for column in ("rule", "visits removed", "patients removed", "visits", "patients"):
        funnel.add_column(column, justify="left" if column == "rule" else "right")
    for step in stats.get("funnel", []):
        funnel.add_row(
            step["rule"],
            str(step.get("visits_removed", "")),
            str(step.get("patients_removed", "")),
            str(step["visits"]),
            str(step["patients"]),
        )
    console.print(funnel)
    dropped = [
        (key, value)
        for key, value in stats.items()
        if isinstance(value, int) and value > 0 and any(word in key for word in DROP_WORDS)
    ]
    if dropped:
        rows = Table(title="Rows and visits set aside by the readers (stats.json)")
        rows.add_column("counter")
        rows.add_column("count", justify="right")
        for key, value in dropped:
            rows.add_row(key, str(value))
        console.print(rows)


@prepare_app.command("mimic3")
def prepare_mimic3_command(
    data: Annotated[Path, typer.Option(help="Folder with the MIMIC-III tables.")],
    resources: Annotated[
        Path,
        typer.Option(
            help="Folder with ndc2rxnorm_mapping.txt, "
            "rxcui2atc4.csv (see ../shared/data/resources)."
        ),
    ],
    out: Out,
    ndc_map: NdcMap = None,
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: TopProc = 0,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = None,
    protocol: Protocol = "default",
    min_prescribed_admissions: MinPrescribed = None,
    profile_fields: ProfileFields = None,
    require_smiles: RequireSmiles = None,
    smiles: Smiles = None,
) -> None:
    """MIMIC-III (full release or the demo) -> dataset directory."""
    from leader.data.prepare import prepare_mimic3

    options = _cohort_options(
        top_med,
        top_diag,
        top_proc,
        min_visits,
        split,
        seed,
        samples,
        (min_prescribed_admissions, profile_fields, require_smiles),
        _protocol_options(protocol, "mimic3", resources, require_smiles),
    )
    _run(
        "mimic3",
        out,
        lambda progress: prepare_mimic3(
            data,
            resources,
            out,
            ndc_maps=ndc_map or [],
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            progress=progress,
            **options,
        ),
        smiles,
        resources,
    )


@prepare_app.command("mimic4")
def prepare_mimic4_command(
    data: Annotated[Path, typer.Option(help="The MIMIC-IV release folder or its hosp/.")],
    resources: Annotated[
        Path, typer.Option(help="Folder with ndc2rxnorm_mapping.txt, rxcui2atc4.csv.")
    ],
    out: Out,
    ndc_map: NdcMap = None,
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    patient_fraction: Annotated[
        float | None, typer.Option(help="Keep a random share of patients (the paper: 0.15) [1].")
    ] = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: Annotated[
        int | None,
        typer.Option(help="Keep the K most frequent procedures (0 = all; paper: 1000) [0]."),
    ] = None,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = None,
    protocol: Protocol = "default",
    min_prescribed_admissions: MinPrescribed = None,
    profile_fields: ProfileFields = None,
    require_smiles: RequireSmiles = None,
    smiles: Smiles = None,
) -> None:
    """MIMIC-IV v2.x hosp/ module -> dataset directory (ICD-9 and ICD-10 kept apart)."""
    from leader.data.prepare import prepare_mimic4
    from leader.protocol import PAPER_MIMIC4_PATIENT_FRACTION

    options = _cohort_options(
        top_med,
        top_diag,
        top_proc,
        min_visits,
        split,
        seed,
        samples,
        (min_prescribed_admissions, profile_fields, require_smiles),
        _protocol_options(protocol, "mimic4", resources, require_smiles),
    )
    if patient_fraction is None:
        patient_fraction = PAPER_MIMIC4_PATIENT_FRACTION if protocol == "paper" else 1.0
    _run(
        "mimic4",
        out,
        lambda progress: prepare_mimic4(
            data,
            resources,
            out,
            ndc_maps=ndc_map or [],
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            patient_fraction=patient_fraction,
            progress=progress,
            **options,
        ),
        smiles,
        resources,
    )


@prepare_app.command("events")
def prepare_events_command(
    events: Annotated[
        Path,
        typer.Option(
            help="Event table: patient_id, visit_id, visit_time, "
            "kind, code[, name] (CSV, CSV.GZ or Parquet)."
        ),
    ],
    out: Out,
    profiles: Annotated[
        Path | None, typer.Option(help="Profile table: patient_id + any columns.")
    ] = None,
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: TopProc = 0,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = None,
    min_prescribed_admissions: MinPrescribed = None,
    profile_fields: ProfileFields = None,
    require_smiles: RequireSmiles = None,
    smiles: Smiles = None,
) -> None:
    """Generic event table (your hospital, a Synthea or FHIR export) -> dataset directory."""
    from leader.data.prepare import prepare_events

    options = _cohort_options(
        top_med,
        top_diag,
        top_proc,
        min_visits,
        split,
        seed,
        samples,
        (min_prescribed_admissions, profile_fields, require_smiles),
    )
    _run(
        "events",
        out,
        lambda progress: prepare_events(
            events,
            out,
            profiles=profiles,
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            progress=progress,
            **options,
        ),
        smiles,
    )


@prepare_app.command("eicu")
def prepare_eicu_command(
    data: Annotated[Path, typer.Option(help="Folder with the eICU-CRD v2.0 (or demo) tables.")],
    out: Out,
    drug_map: Annotated[
        Path | None,
        typer.Option(help="Map HICL / drug name -> ATC3 (columns atc3, hicl and/or drugname)."),
    ] = None,
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: TopProc = 0,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = "all",
) -> None:
    """eICU-CRD v2.0 -> dataset directory (unit stays as visits, HICL drugs)."""
    from leader.data.prepare import prepare_eicu

    options = _cohort_options(top_med, top_diag, top_proc, min_visits, split, seed, samples)
    _run(
        "eicu",
        out,
        lambda progress: prepare_eicu(
            data,
            out,
            drug_map=drug_map,
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            progress=progress,
            **options,
        ),
    )


@prepare_app.command("omop")
def prepare_omop_command(
    out: Out,
    data: Annotated[
        Path | None,
        typer.Option(help="Folder with one CSV / CSV.GZ / Parquet file per CDM table."),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(help="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db."),
    ] = None,
    schema: Annotated[str | None, typer.Option(help="Database schema of the CDM tables.")] = None,
    drug_level: Annotated[
        str,
        typer.Option(help="concept | ingredient | atc3 (the last two need concept_ancestor)."),
    ] = "concept",
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: TopProc = 0,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = "all",
) -> None:
    """OMOP CDM 5.3 / 5.4 (files or a database) -> dataset directory."""
    from leader.data.prepare import prepare_omop

    options = _cohort_options(top_med, top_diag, top_proc, min_visits, split, seed, samples)
    _run(
        "omop",
        out,
        lambda progress: prepare_omop(
            out,
            data=data,
            db=db,
            schema=schema,
            drug_level=drug_level,
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            progress=progress,
            **options,
        ),
    )


@prepare_app.command("fhir")
def prepare_fhir_command(
    data: Annotated[
        Path,
        typer.Option(
            help="FHIR R4 export: Bulk Data NDJSON (*.ndjson, *.ndjson.gz) or Bundles "
            "(a folder of per-patient JSON, as Synthea writes), a file or a folder."
        ),
    ],
    out: Out,
    diagnosis_system: Annotated[
        str,
        typer.Option(
            help="Condition code systems in preference order (icd9, icd10, snomed, ...; "
            "several: codes stored as system:code)."
        ),
    ] = "icd9,icd10,snomed",
    procedure_system: Annotated[
        str, typer.Option(help="Procedure code systems in preference order.")
    ] = "icd9,icd10pcs,cpt,snomed",
    drug_system: Annotated[
        str | None,
        typer.Option(
            help="Medication code systems in preference order [rxnorm; atc3: atc,rxnorm]."
        ),
    ] = None,
    drug_level: Annotated[
        str,
        typer.Option(
            help="rxnorm: drug codes as given; atc3: ATC codings cut to ATC3, RxNorm mapped "
            "(RESOURCES/rxcui2atc4.csv or --drug-map), so DDI pairs and molecules apply."
        ),
    ] = "rxnorm",
    resources: Annotated[
        Path | None,
        typer.Option(
            help="Folder with rxcui2atc4.csv (and atc3_smiles.csv) for --drug-level atc3."
        ),
    ] = None,
    drug_map: Annotated[
        Path | None, typer.Option(help="RxCUI -> ATC map CSV (columns rxcui and atc3/atc4/atc).")
    ] = None,
    validate: Annotated[
        bool,
        typer.Option(
            help="Check every resource against the FHIR R4B models (fhir.resources; slower)."
        ),
    ] = False,
    ddi: Ddi = None,
    twosides: Twosides = None,
    drug_atc: DrugAtc = None,
    ddi_side_effects: SideEffects = 40,
    atc_names: AtcNames = None,
    top_med: TopMed = 300,
    top_diag: TopDiag = 2000,
    top_proc: TopProc = 0,
    min_visits: MinVisits = 1,
    split: Split = "8:1:1",
    seed: Seed = 42,
    samples: Samples = "all",
    smiles: Smiles = None,
) -> None:
    """FHIR R4 (Bulk Data NDJSON or Bundles, e.g. Synthea) -> dataset directory."""
    from leader.data.prepare import prepare_fhir

    options = _cohort_options(top_med, top_diag, top_proc, min_visits, split, seed, samples)
    _run(
        "fhir",
        out,
        lambda progress: prepare_fhir(
            data,
            out,
            diagnosis_system=diagnosis_system,
            procedure_system=procedure_system,
            drug_system=drug_system,
            drug_level=drug_level,
            resources=resources,
            drug_map=drug_map,
            validate=validate,
            ddi=ddi,
            twosides=twosides,
            drug_atc=drug_atc,
            ddi_side_effects=ddi_side_effects,
            atc_names=atc_names,
            progress=progress,
            **options,
        ),
        smiles,
        resources,
    )


def stats_command(
    dataset: Annotated[Path, typer.Argument(help="A dataset directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print stats.json as is.")] = False,
) -> None:
    """Print a dataset's cohort statistics and funnel."""
    from leader.data.store import VisitDataset

    stats = VisitDataset.load(dataset).stats
    if as_json:
        typer.echo(json.dumps(stats, indent=2))
    else:
        print_summary(stats, dataset)


def register(app: typer.Typer) -> None:
    app.add_typer(prepare_app, name="prepare")
    app.command("stats")(stats_command)
