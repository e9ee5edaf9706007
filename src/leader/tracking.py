"""Optional experiment tracking (``report_to``): TensorBoard or MLflow, off by default.

Both write under the run folder (``run/tensorboard/``, ``run/mlruns/``): nothing leaves
the machine. The libraries are optional (``pip install tensorboard`` or ``mlflow``); asking
for one that is not installed is a clear error before training starts.

>>> tracker = open_tracker("tensorboard", Path("runs/s"), {"lr": 5e-4})   # doctest: +SKIP
>>> tracker.log({"loss": 0.3, "val": 0.71}, step=1); tracker.close()    # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from leader.errors import LeaderError
from leader.optional import available

REPORT_TO = ("none", "tensorboard", "mlflow")


class Tracker(Protocol):
    def log(self, metrics: dict[str, float], step: int) -> None: ...

    def close(self) -> None: ...


class _Nothing:
    def log(self, metrics: dict[str, float], step: int) -> None:
        return None

    def close(self) -> None:
        return None


class _TensorBoard:
    def __init__(self, folder: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder))

    def log(self, metrics: dict[str, float], step: int) -> None:
        for name, value in metrics.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _MLflow:
    def __init__(self, folder: Path, params: dict[str, Any]) -> None:
        import mlflow

        mlflow.set_tracking_uri(folder.resolve().as_uri())
        self.mlflow = mlflow
        self.run = mlflow.start_run()
        flat = {k: v for k, v in _flatten(params).items() if v is not None}
        mlflow.log_params({k: str(v)[:250] for k, v in flat.items()})

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


def open_tracker(kind: str, run_dir: Path | None, params: dict[str, Any]) -> Tracker:
    """A tracker writing under ``run_dir`` (``none``, or no run folder: a no-op)."""
    if kind not in REPORT_TO:
        raise LeaderError(f"report_to must be one of {', '.join(REPORT_TO)} (got {kind!r})")
    if kind == "none" or run_dir is None:
        return _Nothing()
    package = "tensorboard" if kind == "tensorboard" else "mlflow"
    if not available(package):
        raise LeaderError(
            f"report_to {kind} needs the {package!r} package: pip install {package}"
        )
    if kind == "tensorboard":
        return _TensorBoard(run_dir / "tensorboard")
    return _MLflow(run_dir / "mlruns", params)


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out
