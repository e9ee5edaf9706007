"""``leader run`` / ``leader demo``: the whole LEADER pipeline from one YAML file.

Steps, in order (each in its own folder under the output folder):

``prepare``            raw data (synthetic, events, MIMIC-III/IV, or a ready dataset) -> dataset
``teacher``            LoRA fine-tuning of the LLM teacher LEADER(T)
``predict``            teacher probabilities + hidden states of every sample (features file)
``student``            LEADER(S), distilled from the teacher's hidden states (and, with
                       ``kd``, its drug probabilities)
``student_no_distill`` the same student with alpha = kd = 0 (the ablation)
``popularity``         the popularity floor (most frequent training drugs)
``evaluate``           DESIGN.md metrics of every model, efficiency
``report``             report.md, results.json, PNG plots

A step is reused when its key is unchanged: the hash of its config section, the keys of
the steps it reads, and the fingerprints (size, mtime) of the input files it reads. The key
is stored in ``<step>/step.json`` once the step finished. ``--from STEP`` redoes that step
and every later one. An interrupted teacher or student step resumes from its checkpoint
when its key is unchanged.

>>> run_pipeline(load_config(Path("configs/mimic3-demo.yaml")))   # doctest: +SKIP
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from leader.config import Config, from_dict, nested, option, replace, to_dict
from leader.errors import LeaderError
from leader.io import write_json_atomic
from leader.runinfo import write_model_card, write_run_info
from leader.student.config import StudentConfig
from leader.teacher.config import TeacherConfig

STEPS: tuple[str, ...] = (
    "prepare",
    "teacher",
    "predict",
    "student_no_distill",
    "student",
    "student_self",
    "student_prior",
    "student_noise",
    "popularity",
    "evaluate",
    "report",
)
# Steps that read only earlier steps' output: with workers > 1 they run in worker processes,
# each as soon as the steps of this group it reads (UPSTREAM) are done.
STUDENT_STEPS: tuple[str, ...] = (
    "student_no_distill",
    "student",
    "student_self",
    "student_prior",
    "student_noise",
)
# Distillation controls (leader.controls): the student distilled, through the same terms,
# settings and weight search, from these features files instead of the teacher's.
CONTROLS: dict[str, str] = {
    "student_self": "self.safetensors",  # the student without distillation as the teacher
    "student_prior": "prior.safetensors",  # prior soft labels, the teacher's mean state
    "student_noise": "noise.safetensors",  # noise of the teacher's width and scale
}
# Which earlier steps each step reads (their keys enter its key). Distilled students read
# the plain student: it is their alpha = kd = 0 candidate (and the self-teacher).
UPSTREAM: dict[str, tuple[str, ...]] = {
    "prepare": (),
    "teacher": ("prepare",),
    "predict": ("prepare", "teacher"),
    "student_no_distill": ("prepare",),
    "student": ("prepare", "predict", "student_no_distill"),
    "student_self": ("prepare", "student_no_distill"),
    "student_prior": ("prepare", "predict", "student_no_distill"),
    "student_noise": ("prepare", "predict", "student_no_distill"),
    "popularity": ("prepare",),
    "evaluate": ("prepare", "predict", *STUDENT_STEPS, "popularity"),
    "report": ("evaluate",),
}
# The config sections each step depends on.
SECTIONS: dict[str, tuple[str, ...]] = {
    "prepare": ("data",),
    "teacher": ("teacher",),
    "predict": ("predict",),
    "student": ("student",),
    "student_no_distill": ("student",),
    "student_self": ("student",),
    "student_prior": ("student",),
    "student_noise": ("student",),
    "popularity": (),
    "evaluate": ("evaluate",),
    "report": ("name",),
}
ORACLE_DRAWS = 200  # re-draws per visit for the synthetic cohort's oracle row
SOURCES = ("synthetic", "events", "mimic3", "mimic4", "dataset")
# data-section keys that name input files or folders (fingerprinted into the key)
INPUT_KEYS = (
    "events",
    "profiles",
    "ddi",
    "data",
    "resources",
    "atc_names",
    "path",
    "twosides",
    "drug_atc",
    "ndc_maps",
)


@dataclass
class PredictSection(Config):
    """The teacher's feature export."""

    batch_size: int | None = option(
        None, "samples per forward pass (null = the teacher's eval_batch_size)"
    )


@dataclass
class EvaluateSection(Config):
    """How the evaluate step scores and times every model."""

    rounds: int = option(10, "rounds of a random 80% of the test samples (mean ± std)")
    efficiency: bool = option(True, "time the models (parameters, latency, throughput)")
    teacher_samples: int = option(16, "patients used to time the teacher")
    latency_calls: int = option(50, "single-patient calls for the student's latency")
    throughput_samples: int = option(2000, "samples in the student's throughput batch")

    def check(self) -> list[str]:
        return [] if self.rounds >= 1 else [f"rounds must be >= 1 (got {self.rounds})"]


@dataclass
class PipelineConfig(Config):
    """A pipeline YAML: every section typed and checked before the first step runs."""

    name: str = option("leader", "shown in the report title")
    out: str = option("leader-run", "output folder (relative to the working directory)")
    protocol: str = option(
        "default", "default, or paper: the LEADER paper's cohort and scoring (leader.protocol)"
    )
    data: dict[str, Any] = option(
        factory=lambda: {"source": "synthetic", "patients": 2000, "seed": 0},
        help="source (synthetic, events, mimic3, mimic4, dataset) and its options",
    )
    teacher: TeacherConfig | None = nested(TeacherConfig, "the LLM teacher (null: none)")
    predict: PredictSection = nested(PredictSection, "the teacher's feature export")
    student: StudentConfig = nested(StudentConfig, "LEADER(S) (also trained with alpha 0)")
    evaluate: EvaluateSection = nested(EvaluateSection, "evaluation rounds and timing")
    workers: int = option(
        1,
        "student trainings run at once, each in its own process (the student with and "
        "without distillation and the three controls); 2 on 2 cores with student threads 1",
    )

    def check(self) -> list[str]:
        if self.data.get("source") not in SOURCES:
            return [f"data.source must be one of {', '.join(SOURCES)}"]
        if self.workers < 1:
            return [f"workers must be >= 1 (got {self.workers})"]
        return []


def _config_from_dict(raw: Any, source: str) -> PipelineConfig:
    if not isinstance(raw, dict):
        raise LeaderError(f"{source}: expected a YAML mapping with a `data:` section")
    raw = dict(raw)
    teacher = raw.get("teacher", {})
    if isinstance(teacher, dict) and teacher.get("enabled", True) is False:
        raw["teacher"] = None
    elif isinstance(teacher, dict):
        raw["teacher"] = {k: v for k, v in teacher.items() if k != "enabled"}
    from leader.protocol import check, student_defaults

    protocol = check(str(raw.get("protocol", "default")), f"{source}: protocol")
    source_kind = (raw.get("data") or {}).get("source")
    if protocol == "paper" and source_kind not in ("mimic3", "mimic4", "dataset"):
        raise LeaderError(f"{source}: protocol paper needs data.source mimic3 or mimic4")
    # The protocol's student settings are defaults: the student section's own values win.
    raw["student"] = {**student_defaults(protocol), **(raw.get("student") or {})}
    # Fails now, not after an hour of teacher training.
    return from_dict(PipelineConfig, raw, source)


def load_config(path: Path) -> PipelineConfig:
    """Read a pipeline YAML; relative input paths are taken from the YAML's folder."""
    import yaml

    if not Path(path).is_file():
        raise LeaderError(f"{path}: pipeline config not found")
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    config = _config_from_dict(raw, str(path))
    base = Path(path).resolve().parent
    for key in INPUT_KEYS:
        value = config.data.get(key)
        if isinstance(value, str):
            config.data[key] = _input_path(value, base, f"{path}: data.{key}")
        elif isinstance(value, list):
            config.data[key] = [_input_path(str(v), base, f"{path}: data.{key}") for v in value]
    model = config.teacher.model if config.teacher is not None else None
    if isinstance(model, str) and ("$" in model or model.startswith(("./", "../", "~"))):
        assert config.teacher is not None
        config.teacher.model = _input_path(model, base, f"{path}: teacher.model")
    return config


def _input_path(value: str, base: Path, where: str) -> str:
    """Expand $VARS and ~; resolve relative paths against the YAML's folder, except those
    that come from an environment variable, which mean what they mean in the user's shell
    (``LEADER_DATA=../shared/data``: relative to the working directory)."""
    expanded = os.path.expanduser(os.path.expandvars(value))
    if "$" in expanded:
        raise LeaderError(f"{where}: {value!r} uses an environment variable that is not set")
    anchor = Path.cwd() if value.startswith("$") else base
    return str((anchor / expanded).resolve())


def demo_config() -> PipelineConfig:
    """The packaged demo configuration (synthetic cohort, SmolLM2 teacher)."""
    import yaml

    text = resources.files("leader").joinpath("configs/demo.yaml").read_text(encoding="utf-8")
    return _config_from_dict(yaml.safe_load(text), "leader/configs/demo.yaml")


# ---------------------------------------------------------------------------- step keys
def _fingerprint(path: Path) -> list[Any]:
    """(relative name, size, mtime) of a file or of every file under a folder."""
    if path.is_file():
        stat = path.stat()
        return [[path.name, stat.st_size, stat.st_mtime_ns]]
    if path.is_dir():
        out = []
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            stat = item.stat()
            out.append([str(item.relative_to(path)), stat.st_size, stat.st_mtime_ns])
        return out
    raise LeaderError(f"{path}: input named in the pipeline config does not exist")


def _inputs(config: PipelineConfig, step: str) -> dict[str, Any]:
    if step != "prepare":
        return {}
    out: dict[str, Any] = {}
    for key in INPUT_KEYS:
        value = config.data.get(key)
        if isinstance(value, str):
            out[key] = _fingerprint(Path(value))
        elif isinstance(value, list):
            out[key] = [_fingerprint(Path(v)) for v in value]
    return out


def step_key(config: PipelineConfig, step: str, keys: dict[str, str]) -> str:
    """Hash of the step's config sections, upstream keys and input fingerprints."""
    from leader import __version__

    sections = {s: _plain(getattr(config, s)) for s in SECTIONS[step]}
    if step == "student_no_distill":
        sections["student"] = {**to_dict(config.student), "alpha": 0.0, "kd": 0.0}
    payload = {
        "step": step,
        "version": __version__,
        "protocol": config.protocol,
        "sections": sections,
        "upstream": {u: keys.get(u, "") for u in UPSTREAM[step]},
        "inputs": _inputs(config, step),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _plain(value: Any) -> Any:
    return to_dict(value) if is_dataclass(value) and not isinstance(value, type) else value


# ---------------------------------------------------------------------------- the runner
@dataclass
class StepRecord:
    step: str
    key: str
    reused: bool
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)


class Pipeline:
    def __init__(self, config: PipelineConfig, root: Path, log: Callable[[str], None]) -> None:
        self.config = config
        self.root = root
        self.log = log
        self.keys: dict[str, str] = {}
        self.records: dict[str, StepRecord] = {}

    def folder(self, step: str) -> Path:
        return self.root / step

    @property
    def dataset_dir(self) -> Path:
        return self.folder("prepare") / "dataset"

    @property
    def features(self) -> Path | None:
        if self.config.teacher is None:
            return None
        return self.folder("predict") / "features.safetensors"

    def run(self, from_step: str | None) -> None:
        if from_step is not None and from_step not in STEPS:
            raise LeaderError(f"--from {from_step}: unknown step; steps: {', '.join(STEPS)}")
        if self.config.teacher is not None:
            from leader.optional import require

            require("transformers", "teacher", "a pipeline with a teacher")
        forced = STEPS.index(from_step) if from_step else len(STEPS)
        group: list[tuple[str, str, bool]] = []  # student steps, run together
        for index, step in enumerate(STEPS):
            if self.config.teacher is None and step in ("teacher", "predict", *CONTROLS):
                continue
            key = step_key(self.config, step, self.keys)
            self.keys[step] = key
            if step in STUDENT_STEPS and self.config.workers > 1:
                group.append((step, key, index >= forced))
                continue
            self._run_group(group)
            group = []
            self._run_step(step, key, force=index >= forced)
        self._run_group(group)

    def _run_group(self, group: list[tuple[str, str, bool]]) -> None:
        """Student steps, ``workers`` at a time, each in a fresh process (its own torch
        threads) once the steps of the group it reads are done; a step whose marker matches
        its key is reused as usual."""
        pending = [(s, k, f) for s, k, f in group if f or not self._reusable(s, k)]
        for step, key, force in group:
            if (step, key, force) not in pending:
                self._run_step(step, key, force=False)  # reused: logs and records it
        if not pending:
            return
        from leader.workers import run_in_processes

        self.log(f"[{', '.join(s for s, _, _ in pending)}] {self.config.workers} at a time")
        names = [step for step, _, _ in pending]
        records = run_in_processes(  # a failed step raises here, with its traceback
            _run_step_in_process,
            [(self.config, self.root, step, key, force) for step, key, force in pending],
            self.config.workers,
            after=[[names.index(u) for u in UPSTREAM[step] if u in names] for step in names],
        )
        for record in records:
            self.records[record.step] = record
        for step, _, _ in group:  # records in step order, as a sequential run leaves them
            self.records[step] = self.records.pop(step)

    def _reusable(self, step: str, key: str) -> bool:
        marker = self.folder(step) / "step.json"
        if not marker.exists():
            return False
        return json.loads(marker.read_text(encoding="utf-8")).get("key") == key

    def _run_step(self, step: str, key: str, force: bool) -> None:
        folder = self.folder(step)
        marker = folder / "step.json"
        if not force and marker.exists():
            done = json.loads(marker.read_text(encoding="utf-8"))
            if done.get("key") == key:
                self.records[step] = StepRecord(
                    step, key, True, float(done.get("seconds", 0)), done.get("info", {})
                )
                self.log(f"[{step}] unchanged, reused ({folder})")
                return
        pending = folder / "pending.json"
        resume = (
            not force
            and pending.exists()
            and json.loads(pending.read_text(encoding="utf-8")).get("key") == key
        )
        if not resume:
            shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True, exist_ok=True)
        write_json_atomic(pending, {"key": key})
        self.log(f"[{step}] {'resuming' if resume else 'running'} ...")
        started = time.perf_counter()
        info = getattr(self, f"_step_{step}")(folder, resume) or {}
        seconds = time.perf_counter() - started
        write_json_atomic(
            marker,
            {
                "step": step,
                "key": key,
                "seconds": round(seconds, 2),
                "info": info,
                "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
            },
        )
        pending.unlink(missing_ok=True)
        self.records[step] = StepRecord(step, key, False, seconds, info)
        self.log(f"[{step}] done in {seconds:.1f} s")

    # ------------------------------------------------------------------------ steps
    def _step_prepare(self, folder: Path, resume: bool) -> dict[str, Any]:
        data = dict(self.config.data)
        source = data.pop("source")
        options = dict(data.pop("options", {}) or {})
        if "split" in options:
            options["split"] = tuple(options["split"])
        out = folder / "dataset"
        if source == "synthetic":
            from leader.data.prepare import prepare_events
            from leader.data.synthetic import generate, write

            # The oracle (each visit's true drug probabilities) rides along: the report's
            # upper bound. Its own random stream: the cohort is the same without it.
            cohort = generate(
                int(data.get("patients", 2000)), int(data.get("seed", 0)), ORACLE_DRAWS
            )
            raw = write(cohort, folder / "raw")
            dataset = prepare_events(
                raw / "events.csv",
                out,
                profiles=raw / "profiles.csv",
                ddi=raw / "ddi.csv",
                progress=self._progress("prepare"),
                **options,
            )
        elif source == "events":
            from leader.data.prepare import prepare_events

            dataset = prepare_events(
                data["events"],
                out,
                profiles=data.get("profiles"),
                ddi=data.get("ddi"),
                atc_names=data.get("atc_names"),
                progress=self._progress("prepare"),
                **options,
            )
        elif source in ("mimic3", "mimic4"):
            from leader.data import prepare as prep
            from leader.protocol import PAPER_MIMIC4_PATIENT_FRACTION, cohort_defaults

            paper = cohort_defaults(self.config.protocol, source, data.get("resources"))
            options = {**paper, **options}
            if paper and source == "mimic4":
                data.setdefault("patient_fraction", PAPER_MIMIC4_PATIENT_FRACTION)

            fn = prep.prepare_mimic3 if source == "mimic3" else prep.prepare_mimic4
            extra = {
                k: data[k]
                for k in (
                    "ddi",
                    "twosides",
                    "drug_atc",
                    "atc_names",
                    "ndc_maps",
                    "patient_fraction",
                )
                if k in data
            }
            if source == "mimic3":
                extra.pop("patient_fraction", None)
            dataset = fn(
                data["data"],
                data["resources"],
                out,
                progress=self._progress("prepare"),
                **extra,
                **options,
            )
        else:  # a ready dataset directory: copy it so the run is self-contained
            from leader.data.store import VisitDataset

            dataset = VisitDataset.load(data["path"])
            shutil.copytree(data["path"], out)
        return {"stats": dataset.stats}

    def _progress(self, step: str) -> Callable[[str], None]:
        return lambda message: self.log(f"[{step}] {message}")

    def _step_teacher(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.teacher import train_teacher

        assert self.config.teacher is not None
        config = copy.deepcopy(self.config.teacher)
        # The features come from the frozen layers' cache when there is one: the predict
        # step then only copies them.
        cached = config.caches_frozen_states
        train_teacher(
            self.dataset_dir,
            folder / "run",
            config,
            resume=resume,
            features_out=folder / "features.safetensors" if cached else None,
        )
        metrics_file = folder / "run" / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.exists() else {}
        return {"best_val_prauc": metrics.get("best_val_prauc")}

    def _step_predict(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.controls import noise_features, prior_features
        from leader.teacher import predict_teacher
        from leader.teacher.features import read_features

        assert self.config.teacher is not None
        out = folder / "features.safetensors"
        started = time.perf_counter()
        for name in ("features.safetensors", "features.metrics.json"):
            done = self.folder("teacher") / name
            if done.exists():
                shutil.copyfile(done, folder / name)
        if not out.exists():
            predict_teacher(
                self.folder("teacher") / "run",
                self.dataset_dir,
                out,
                batch_size=self.config.predict.batch_size,
            )
        seconds = time.perf_counter() - started
        prior_features(out, self.dataset_dir, folder / CONTROLS["student_prior"])
        noise_features(out, self.dataset_dir, folder / CONTROLS["student_noise"], seed=0)
        tensors, _ = read_features(out)
        samples = int(tensors["hidden"].shape[0])
        return {
            "samples": samples,
            "seconds": round(seconds, 2),
            "throughput_per_s": round(samples / max(seconds, 1e-9), 3),
        }

    def _distilled(
        self, step: str, folder: Path, features: Path | None, resume: bool
    ) -> dict[str, Any]:
        """A student distilled from ``features`` with the student section's settings (the
        weights chosen on validation unless choose_distillation is off); the plain
        student stands for alpha = kd = 0."""
        from leader.student import train_student

        config = copy.deepcopy(self.config.student)
        run = folder / "run"
        plain = self.folder("student_no_distill") / "run"
        train_student(
            self.dataset_dir, run, config, features, resume, self._progress(step), plain
        )
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        search = metrics.get("distillation_search")
        chosen = search["chosen"] if search else {"alpha": config.alpha, "kd": config.kd}
        info: dict[str, Any] = {**chosen, "chosen_on_validation": bool(search)}
        if features is not None:
            info["features"] = features.name
        return info

    def _step_student(self, folder: Path, resume: bool) -> dict[str, Any]:
        return self._distilled("student", folder, self.features, resume)

    def _step_student_no_distill(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.student import train_student

        train_student(
            self.dataset_dir,
            folder / "run",
            replace(self.config.student, alpha=0.0, kd=0.0),
            None,
            resume=resume,
            log=self._progress("student_no_distill"),
        )
        return {"alpha": 0.0, "kd": 0.0}

    def _step_student_self(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.controls import self_features

        features = folder / CONTROLS["student_self"]
        plain = self.folder("student_no_distill") / "run"
        self_features(plain, self.dataset_dir, features)
        return self._distilled("student_self", folder, features, resume)

    def _step_student_prior(self, folder: Path, resume: bool) -> dict[str, Any]:
        features = self.folder("predict") / CONTROLS["student_prior"]
        return self._distilled("student_prior", folder, features, resume)

    def _step_student_noise(self, folder: Path, resume: bool) -> dict[str, Any]:
        features = self.folder("predict") / CONTROLS["student_noise"]
        return self._distilled("student_noise", folder, features, resume)

    def _step_popularity(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.baselines.floors import Popularity
        from leader.data.store import VisitDataset

        model = Popularity().fit(VisitDataset.load(self.dataset_dir))
        model.save_pretrained(folder / "run")
        return {"k": model.k_}

    def _step_evaluate(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.evaluate import evaluate_run

        settings = self.config.evaluate
        rounds, efficiency = settings.rounds, settings.efficiency
        models = {
            "student": self.folder("student") / "run",
            "student_no_distill": self.folder("student_no_distill") / "run",
            **{c: self.folder(c) / "run" for c in CONTROLS if self.config.teacher is not None},
            "popularity": self.folder("popularity") / "run",
        }
        for name, run_dir in models.items():
            self.log(f"[evaluate] {name}")
            report = evaluate_run(
                run_dir,
                self.dataset_dir,
                efficiency=efficiency and name not in CONTROLS,  # controls: quality only
                n_rounds=rounds,
                timing=(settings.latency_calls, settings.throughput_samples),
                protocol=self.config.protocol,
            )
            write_json_atomic(folder / f"{name}.json", report)
        if self.config.teacher is not None:
            self.log("[evaluate] teacher")
            write_json_atomic(folder / "teacher.json", self._evaluate_teacher(rounds))
        oracle = self.folder("prepare") / "raw" / "oracle.csv"
        if oracle.exists():
            self.log("[evaluate] oracle (the generator's true probabilities)")
            write_json_atomic(folder / "oracle.json", self._evaluate_oracle(oracle, rounds))
        return {}

    def _evaluate_oracle(self, oracle: Path, rounds: int) -> dict[str, Any]:
        """The synthetic cohort's ceiling: each test visit's true drug probabilities."""
        from leader.data.store import VisitDataset
        from leader.data.synthetic import oracle_probabilities

        dataset = VisitDataset.load(self.dataset_dir)
        codes = list(dataset.vocab.codes["medication"])

        def probs(samples: list[Any]) -> np.ndarray:
            return oracle_probabilities(oracle, [s.current.visit_id for s in samples], codes)

        test, val = dataset.samples("test"), dataset.samples("val")
        return {
            "model": "oracle (upper bound)",
            "dataset": str(self.dataset_dir),
            "split": "test",
            "samples": len(test),
            **_score_probabilities(dataset, test, val, probs, rounds),
        }

    def _evaluate_teacher(self, rounds: int) -> dict[str, Any]:
        """Teacher rows from its features file, speed from the predict step."""
        from leader.data.store import VisitDataset
        from leader.evaluate import measure_efficiency
        from leader.protocol import PAPER_TEACHER_THRESHOLD
        from leader.teacher import LeaderTeacher
        from leader.teacher.features import read_features

        assert self.features is not None
        dataset = VisitDataset.load(self.dataset_dir)
        tensors, meta = read_features(self.features)
        position = {sid: i for i, sid in enumerate(meta["sample_ids"])}
        mode = str(meta.get("sample_mode") or dataset.default_sample_mode)
        split_samples = {s: dataset.samples(s, mode) for s in ("val", "test")}  # type: ignore[arg-type]

        def probs(samples: list[Any]) -> np.ndarray:
            return tensors["probabilities"][[position[s.sample_id] for s in samples]]

        test, val = split_samples["test"], split_samples["val"]
        # The paper protocol scores the teacher at the authors' fixed 0.5.
        fixed = PAPER_TEACHER_THRESHOLD if self.config.protocol == "paper" else None
        report: dict[str, Any] = {
            "model": "leader-teacher",
            "run": str(self.folder("teacher") / "run"),
            "dataset": str(self.dataset_dir),
            "split": "test",
            "sample_mode": mode,
            "samples": len(test),
            **_score_probabilities(dataset, test, val, probs, rounds, fixed),
        }
        n = self.config.evaluate.teacher_samples
        if self.config.evaluate.efficiency and n > 0 and test:
            teacher = LeaderTeacher.from_pretrained(self.folder("teacher") / "run")
            report["efficiency"] = measure_efficiency(
                teacher, test[:n], latency_calls=min(3, n), min_batch=n
            )
            report["efficiency"]["parameters"] = sum(p.numel() for p in teacher.parameters())
        predict = self.records.get("predict")
        if predict is not None:
            report["predict_step"] = predict.info
        return report

    def _step_report(self, folder: Path, resume: bool) -> dict[str, Any]:
        from leader.report import write_report

        evaluation = self.folder("evaluate")
        results = {
            name: json.loads((evaluation / f"{name}.json").read_text(encoding="utf-8"))
            for name in (
                "teacher",
                "student",
                "student_no_distill",
                *CONTROLS,
                "popularity",
                "oracle",
            )
            if (evaluation / f"{name}.json").exists()
        }
        for name in ("student", *CONTROLS):  # which distillation weights validation chose
            search = self.folder(name) / "run" / "search.json"
            if name in results and search.exists():
                results[name]["distillation_search"] = json.loads(search.read_text("utf-8"))
        histories = {}
        for name in ("student", "student_no_distill"):
            metrics = self.folder(name) / "run" / "metrics.json"
            if metrics.exists():
                histories[name] = json.loads(metrics.read_text(encoding="utf-8"))["history"]
        teacher_log = self.folder("teacher") / "run" / "metrics.json"
        if teacher_log.exists():
            histories["teacher"] = json.loads(teacher_log.read_text(encoding="utf-8"))
        steps = {s: asdict(r) for s, r in self.records.items()}
        write_report(folder, self.config.name, results, histories, steps, self._config_dict())
        return {}

    def _config_dict(self) -> dict[str, Any]:
        return to_dict(self.config)


def _run_step_in_process(
    config: PipelineConfig, root: Path, step: str, key: str, force: bool
) -> StepRecord:
    """One step in a worker process (``workers`` > 1); its log lines go to this process's
    output, prefixed with the step."""
    pipeline = Pipeline(config, root, print)
    pipeline._run_step(step, key, force)
    return pipeline.records[step]


def _score_probabilities(
    dataset: Any,
    test: list[Any],
    val: list[Any],
    probs: Callable[[list[Any]], np.ndarray],
    rounds: int,
    fixed: float | None = None,
) -> dict[str, Any]:
    """DESIGN.md metrics of a probability source on ``test``: at a ``fixed`` threshold, or
    the one chosen on ``val`` (0.5 without validation samples)."""
    from leader.calibration import calibration_report, fit_calibration
    from leader.evaluate import evaluate_probabilities
    from leader.metrics import best_threshold

    val_prob = probs(val).astype(np.float64) if val else None
    if fixed is not None:
        threshold = fixed
    else:
        threshold = best_threshold(dataset.targets(val), val_prob) if val_prob is not None else 0.5
    test_prob = probs(test).astype(np.float64)
    scored = evaluate_probabilities(
        dataset.targets(test),
        test_prob,
        [s.is_single_visit for s in test],
        dataset.ddi_matrix(),
        threshold,
        rounds,
        threshold_rule="fixed" if fixed is not None else "validation",
    )
    if val_prob is not None:  # calibration and conformal sets, fitted on validation
        fitted = fit_calibration(dataset.targets(val), val_prob, [s.patient_id for s in val])
        scored["calibration"] = calibration_report(
            fitted, dataset.targets(test), test_prob, source="validation"
        )
    return scored


def _headline(root: Path) -> dict[str, float] | None:
    """Test PRAUC of each model (whole test set, validation threshold) for the card."""
    results = root / "report" / "results.json"
    if not results.exists():
        return None
    summary = json.loads(results.read_text(encoding="utf-8")).get("summary", {})
    return {
        f"{name} PRAUC": float(row["all"]["prauc"]["mean"])
        for name, row in summary.items()
        if "all" in row
    }


def run_pipeline(
    config: PipelineConfig,
    out: Path | None = None,
    from_step: str | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run (or reuse) every step; return the output folder."""

    root = Path(out) if out is not None else Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    config.to_yaml(root / "config.yaml")
    started = time.perf_counter()
    pipeline = Pipeline(config, root, log)
    pipeline.run(from_step)
    total = time.perf_counter() - started
    dataset = pipeline.dataset_dir if pipeline.dataset_dir.is_dir() else None
    write_run_info(
        root,
        "pipeline",
        config,
        seed=config.student.train.seed,
        dataset_dir=dataset,
        extra={
            "seconds": round(total, 2),
            "steps": {s: asdict(r) for s, r in pipeline.records.items()},
        },
    )
    write_model_card(
        root,
        f"LEADER pipeline run: {config.name}",
        "A whole LEADER run (Liu et al., arXiv 2402.02803): the LLM teacher, the student "
        "distilled from it, the student without distillation and a popularity floor, each in "
        "its own folder (`teacher/run`, `student/run`, ...).",
        data=f"Source `{config.data.get('source')}`; the prepared dataset is `prepare/dataset`.",
        protocol="Full results: `report/report.md`.",
        metrics=_headline(root),
    )
    log(f"pipeline finished in {total:.1f} s ({root})")
    return root
