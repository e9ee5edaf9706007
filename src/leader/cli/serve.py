"""``leader recommend`` and ``leader serve``: use a trained student on files or over HTTP."""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("recommend")(recommend)
    app.command("serve")(serve)


def recommend(
    run: Annotated[Path, typer.Option(help="Student run folder (from `leader student train`).")],
    patients: Annotated[
        Path,
        typer.Option(
            help='JSON (one patient, a list, or {"patients": [...]}) or JSONL (one per line); '
            "schema: leader/patient.schema.json."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Write here (.jsonl: one result a line) instead of stdout."),
    ] = None,
    strict: Annotated[bool, typer.Option(help="Unknown codes are an error.")] = False,
    ddi_safe: Annotated[
        bool, typer.Option(help="Drop the less probable drug of each interacting pair.")
    ] = False,
    margin: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="With --ddi-safe, both drugs of a pair stay when both reach "
            "threshold + margin * (1 - threshold).",
        ),
    ] = 0.5,
    top: Annotated[
        int, typer.Option(min=0, help="Ranked drugs listed per patient (0 = all).")
    ] = 20,
    miss_rate: Annotated[
        float | None,
        typer.Option(
            help="Add the conformal set expected to miss at most this fraction of a visit's "
            "drugs (0 < RATE < 1; needs RUN/calibration.json, see `leader calibrate`)."
        ),
    ] = None,
    explain: Annotated[
        bool,
        typer.Option(
            help="Add `explanations`: per listed drug, the input items with signed "
            "contributions (exact occlusion; see the README's 'Why this drug')."
        ),
    ] = False,
    explain_items: Annotated[
        int, typer.Option(min=1, max=50, help="Contributions listed per drug with --explain.")
    ] = 5,
) -> None:
    """Recommend medications for the patients in a file; prints JSON results."""
    import torch

    from leader.errors import LeaderError
    from leader.recommend import Recommender, load_model, read_patients

    if miss_rate is not None and not 0.0 < miss_rate < 1.0:
        raise LeaderError(f"--miss-rate {miss_rate}: must be strictly between 0 and 1, e.g. 0.1")
    if out is not None:
        check_output_file(out)
    records = read_patients(patients)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    recommender = Recommender(load_model(run), margin=margin)
    if miss_rate is not None:
        recommender.conformal_threshold(miss_rate)  # refuse before any work
    prepared = recommender.prepare_all(records, strict)
    results = recommender.results(
        prepared, recommender.predict(prepared), ddi_safe, top, miss_rate
    )
    if explain:
        from leader.explain import add_explanations

        add_explanations(recommender, prepared, results, explain_items)
    if out is not None and out.suffix.lower() in (".jsonl", ".ndjson"):
        text = "".join(json.dumps(r) + "\n" for r in results)
    else:
        document = {
            "run": str(run),
            "threshold": recommender.threshold,
            "ddi_safe": ddi_safe,
            "ddi_source": recommender.model.ddi_source,
            "results": results,
        }
        text = json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if out is None:
        sys.stdout.write(text)
        return
    write_text_atomic(out, text)
    warned = sum(bool(r["ddi_warnings"]) for r in results)
    typer.echo(f"{len(results)} patient(s) -> {out} ({warned} with DDI warnings)", err=True)


def check_output_file(out: Path) -> None:
    """Refuse an ``--out`` that cannot be written, before any work is done."""
    from leader.errors import LeaderError

    if out.is_dir():
        raise LeaderError(
            f"--out {out}: is a folder; name a file in it, e.g. {out / 'results.json'}"
        )
    folder = out.parent
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
        raise LeaderError(f"--out {out}: the folder {folder} {what}; create it first")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise LeaderError(f"--out {out}: the folder {folder} is not writable")


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` through a temporary file in the same folder and an atomic rename."""
    from leader.errors import LeaderError

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise LeaderError(f"--out {path}: cannot be written ({exc.strerror})") from None


def serve(
    run: Annotated[Path, typer.Option(help="Student run folder (from `leader student train`).")],
    host: Annotated[str, typer.Option(help="Address to listen on (loopback by default).")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option(min=1, max=65535, help="TCP port.")] = 8000,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="LEADER_TOKEN",
            show_default=False,
            help="Require 'Authorization: Bearer TOKEN' on /v1/* (except health) and "
            "/cds-services; "
            "prefer the LEADER_TOKEN variable.",
        ),
    ] = None,
    allow_no_token: Annotated[
        bool,
        typer.Option(
            "--allow-no-token",
            help="Listen on a non-loopback address without a token (refused otherwise: "
            "anyone who can reach it could use it).",
        ),
    ] = False,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Host header accepted without a token besides loopback names and --host "
            "(repeatable; DNS-rebinding guard)."
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes (413 beyond).")
    ] = 1_000_000,
    max_visits: Annotated[
        int, typer.Option(min=1, help="Most visits per request, all patients together (413).")
    ] = 5_000,
    max_codes: Annotated[
        int, typer.Option(min=1, help="Most codes per request, all patients together (413).")
    ] = 50_000,
    body_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to receive a request body (408 beyond).")
    ] = 10.0,
    head_timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds to receive request headers (then closed).")
    ] = 10.0,
    keep_alive: Annotated[
        int, typer.Option(min=1, help="Seconds an idle keep-alive connection stays open.")
    ] = 5,
    max_connections: Annotated[
        int, typer.Option(min=1, help="Open connections at most (503 and close beyond).")
    ] = 200,
    threads: Annotated[int, typer.Option(min=1, help="Torch CPU threads for inference.")] = 1,
    batching: Annotated[
        bool, typer.Option(help="Pool concurrent requests into one model call.")
    ] = True,
    access_log: Annotated[bool, typer.Option(help="One JSON line per request on stderr.")] = True,
    margin: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="ddi_safe=true keeps both drugs of a pair when both reach "
            "threshold + margin * (1 - threshold).",
        ),
    ] = 0.5,
    fhir_drug_map: Annotated[
        Path | None,
        typer.Option(help="FHIR input: RxCUI -> ATC CSV (e.g. rxcui2atc4.csv) for ATC3 models."),
    ] = None,
) -> None:
    """Serve the student over HTTP: POST /v1/recommend, the page at /, docs at /docs."""
    import logging

    from leader.optional import require

    require("fastapi", "serve", "leader serve")
    from leader.errors import LeaderError
    from leader.serve import ServeConfig, display_url, is_loopback

    if not token and not is_loopback(host):
        if not allow_no_token:
            raise LeaderError(
                f"--host {host} is not loopback and no token is set: anyone who can reach it "
                "could read recommendations. Set LEADER_TOKEN (or --token), or pass "
                "--allow-no-token if the network is yours alone"
            )
        typer.echo(f"warning: listening on {host} without a token (--allow-no-token)", err=True)
    import torch

    from leader.serve import create_app
    from leader.serve import run as run_server

    torch.set_num_threads(threads)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for name in ("leader.access", "leader.serve"):
        logger = logging.getLogger(name)
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    config = ServeConfig(
        token=token,
        max_body=max_body,
        max_visits=max_visits,
        max_codes=max_codes,
        batching=batching,
        access_log=access_log,
        margin=margin,
        allowed_hosts=[host, *(allowed_host or [])],
        body_timeout=body_timeout,
        head_timeout=head_timeout,
        keep_alive=keep_alive,
        max_connections=max_connections,
        fhir_drug_map=str(fhir_drug_map) if fhir_drug_map is not None else None,
    )
    app = create_app(run_dir=run, config=config)
    import gc

    gc.freeze()  # the model and vocabularies live forever: keep them out of GC scans
    typer.echo(f"serving {run} on {display_url(host, port)} (docs: /docs)", err=True)
    run_server(app, config, host, port)
