"""``leader recommend`` and ``leader serve``: use a trained student on files or over HTTP."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

LOOPBACK = ("127.0.0.1", "localhost", "::1")


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
) -> None:
    """Recommend medications for the patients in a file; prints JSON results."""
    import torch

    from leader.recommend import Recommender, load_model, read_patients

    torch.set_num_threads(min(2, torch.get_num_threads()))
    records = read_patients(patients)
    recommender = Recommender(load_model(run), margin=margin)
    results = recommender.recommend(records, strict=strict, ddi_safe=ddi_safe, top=top)
    if out is not None and out.suffix.lower() in (".jsonl", ".ndjson"):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in results)
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
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    warned = sum(bool(r["ddi_warnings"]) for r in results)
    typer.echo(f"{len(results)} patient(s) -> {out} ({warned} with DDI warnings)", err=True)


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
            help="Require 'Authorization: Bearer TOKEN' on /v1/* (except health); "
            "prefer the LEADER_TOKEN variable.",
        ),
    ] = None,
    max_body: Annotated[
        int, typer.Option(min=1, help="Largest request body in bytes (413 beyond).")
    ] = 1_000_000,
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
) -> None:
    """Serve the student over HTTP: POST /v1/recommend, the page at /, docs at /docs."""
    import logging

    from leader.optional import require

    require("fastapi", "serve", "leader serve")
    import torch
    import uvicorn

    from leader.serve import ServeConfig, create_app

    torch.set_num_threads(threads)
    if host not in LOOPBACK and not token:
        typer.echo(
            f"warning: listening on {host} without a token; anyone who can reach it may "
            "use it (set LEADER_TOKEN)",
            err=True,
        )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    access = logging.getLogger("leader.access")
    access.addHandler(handler)
    access.setLevel(logging.INFO)
    access.propagate = False
    config = ServeConfig(
        token=token, max_body=max_body, batching=batching, access_log=access_log, margin=margin
    )
    app = create_app(run_dir=run, config=config)
    import gc

    gc.freeze()  # the model and vocabularies live forever: keep them out of GC scans
    typer.echo(f"serving {run} on http://{host}:{port}/ (docs: /docs)", err=True)
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
