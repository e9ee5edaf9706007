"""Fine-tune the LLM teacher: LoRA + medication output layer, BCE (arXiv 2402.02803, §4.2).

One process by default; the same code runs under ``accelerate launch`` (DDP on CPUs/GPUs,
DeepSpeed through accelerate's config) and the main process writes the one artifact.

The data order is a pure function of (seed, epoch), so a run killed at any point resumes
from its last atomic checkpoint and ends where an uninterrupted run would. Checkpoints are
accelerate's ``save_state``/``load_state`` (optimizer, RNG of every process, the transformers
linear warm-up schedule registered with ``register_for_checkpointing``), with the frozen
backbone left out: only the trained tensors are written, as safetensors. fp16 trains under
accelerate's mixed precision (loss scaling) or DeepSpeed's; bf16 needs no scaling.

With ``lora_layers`` set, the frozen lower layers run once per prompt before training and
their output is cached (CPU memory, bf16 under bf16 autocast); every step then runs only the
adapted top layers, which multiplies the steps a CPU budget affords. Training time is also
counted in CPU-seconds (``time.process_time``, evaluation excluded): on a shared machine
wall time says little.

Run folder: ``config.yaml`` (resolved), ``train.log``, ``metrics.json``, ``adapter/`` (peft),
``head.safetensors``, ``tokenizer/``, ``vocab.json``, ``medications.json``, ``teacher.json``;
while training, ``checkpoint/`` (last) and ``best/`` (best validation PRAUC).

>>> train_teacher(Path("data/demo"), Path("runs/t"), TeacherConfig(max_steps=200))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from leader.data.store import Sample, VisitDataset, write_json_atomic
from leader.errors import LeaderError
from leader.metrics import compute
from leader.teacher.backbone import resolve_backbone
from leader.teacher.config import TeacherConfig
from leader.teacher.model import LeaderTeacher, resolve_precision
from leader.teacher.prompts import PromptStats
from leader.teacher.state_cache import StateCache

log = logging.getLogger("leader.teacher")

MEGA_BATCH = 64  # length bucketing sorts windows of this many batches
PRIOR_SAMPLES = 512  # training prompts for head_init "prior" without a frozen-layer cache


# ---------------------------------------------------------------------- batches
def epoch_batches(
    lengths: list[int], batch: int, seed: int, epoch: int, bucket: bool
) -> list[list[int]]:
    """The global batches of one epoch: a pure function of (seed, epoch).

    With bucketing, windows of ``MEGA_BATCH`` batches are sorted by length and cut, and the
    batches shuffled, so each batch holds prompts of similar length (little padding).
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if bucket:
        window = batch * MEGA_BATCH
        order = [
            i
            for start in range(0, len(order), window)
            for i in sorted(order[start : start + window], key=lambda j: lengths[j])
        ]
    batches = [order[start : start + batch] for start in range(0, len(order), batch)]
    if bucket:
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in shuffle]
    return batches


def shard(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's share of a global batch (contiguous, so lengths stay similar)."""
    return [int(i) for i in np.array_split(np.asarray(batch, dtype=np.int64), world)[rank]]


# ---------------------------------------------------------------------- run state
@dataclass
class RunState:
    """What a checkpoint needs besides tensors (JSON)."""

    step: int = 0
    best_prauc: float = -1.0
    best_step: int = 0
    bad_evals: int = 0
    stopped_early: bool = False
    finished: bool = False
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0  # process CPU time in training steps (and the cache)
    train_tokens: int = 0  # real (non-pad) tokens seen by this process
    padded_tokens: int = 0  # tokens including padding
    history: list[dict[str, float]] = field(default_factory=list)
    history_cpu_seconds: list[float] = field(default_factory=list)  # at each evaluation


def _swap_in(tmp: Path, target: Path) -> None:
    """Replace ``target`` by the finished folder ``tmp`` with two renames; a kill between
    them leaves ``.<target>.old``, which :func:`_existing` still finds."""
    old = target.with_name(f".{target.name}.old")
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _fresh(target: Path) -> Path:
    """An empty temporary sibling of ``target`` to write into before :func:`_swap_in`."""
    tmp = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def _existing(target: Path) -> Path | None:
    """The directory, or its ``.old`` twin when a kill landed between the two renames."""
    if (target / "state.json").is_file():
        return target
    old = target.with_name(f".{target.name}.old")
    return old if (old / "state.json").is_file() else None


# ---------------------------------------------------------------------- logging
def _attach_run_log(out_dir: Path) -> list[logging.Handler]:
    """Add this run's ``train.log`` handler to ``leader.teacher`` (and a stderr one when
    nothing above it prints); the caller removes them with :func:`_detach_run_log`."""
    log.setLevel(logging.INFO)
    formatter = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    handlers: list[logging.Handler] = [logging.FileHandler(out_dir / "train.log", encoding="utf-8")]
    if not log.hasHandlers():  # a library call with no logging configured: still show progress
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    return handlers


def _detach_run_log(handlers: list[logging.Handler]) -> None:
    for handler in handlers:
        log.removeHandler(handler)
        handler.close()


def mixed_precision(autocast: torch.dtype | None, deepspeed: bool) -> str:
    """accelerate's ``mixed_precision`` for an autocast dtype: "fp16" (so gradients are
    loss-scaled and cannot underflow) unless DeepSpeed scales them itself; bf16 and fp32
    need no scaler."""
    return "fp16" if autocast == torch.float16 and not deepspeed else "no"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


# ---------------------------------------------------------------------- the trainer
class _Trainer:
    def __init__(
        self,
        dataset_dir: Path,
        out_dir: Path,
        config: TeacherConfig,
        features_out: Path | None = None,
        untrained_out: Path | None = None,
    ) -> None:
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.config = config
        self.out = out_dir
        self.dataset_dir = dataset_dir
        self.features_out = features_out
        self.untrained_out = untrained_out
        deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        autocast = None if deepspeed else resolve_precision(config.precision, device)
        # cpu=True without CUDA: a launch with several processes then uses gloo on the CPU.
        self.accelerator = Accelerator(
            gradient_accumulation_steps=config.grad_accum,
            cpu=not torch.cuda.is_available(),
            mixed_precision=mixed_precision(autocast, deepspeed),
        )
        self.main = self.accelerator.is_main_process
        self.rank = self.accelerator.process_index
        self.world = self.accelerator.num_processes
        self.deepspeed = self.accelerator.distributed_type == DistributedType.DEEPSPEED
        self.autocast = None if self.deepspeed else autocast
        if config.threads:
            torch.set_num_threads(config.threads)
        self.dataset = VisitDataset.load(dataset_dir)
        mode = config.resolved_sample_mode(self.dataset.default_sample_mode)
        self.train_samples = self._subset(
            self.dataset.samples("train", mode), config.max_train_samples
        )
        self.val_samples = self._subset(self.dataset.samples("val", mode), config.max_eval_samples)
        if not self.train_samples:
            raise LeaderError(f"{dataset_dir}: the train split has no samples")

    def _subset(self, samples: list[Sample], limit: int) -> list[Sample]:
        if not limit or len(samples) <= limit:
            return samples
        generator = torch.Generator().manual_seed(self.config.seed)
        chosen = sorted(torch.randperm(len(samples), generator=generator)[:limit].tolist())
        return [samples[i] for i in chosen]

    # ------------------------------------------------------------------ build
    def build(self) -> None:
        from transformers import get_linear_schedule_with_warmup

        config = self.config
        with self.accelerator.main_process_first():  # one GGUF conversion, not one per rank
            source = resolve_backbone(config.model)
        self.model = LeaderTeacher.build(config, self.dataset.vocab, source)
        self.model.to(self.accelerator.device)
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info(
            "backbone %s (%s), hidden %d, %d drugs; trainable %d of %d parameters "
            "(%.2f%%); precision %s; %d process(es)",
            config.model,
            source.location,
            self.model.hidden_size,
            len(self.model.medication_codes),
            trainable,
            total,
            100 * trainable / total,
            self.autocast or "fp32",
            self.world,
        )
        self.train_ids, stats = self.model.encode(self.train_samples)
        log.info("train prompts: %s", stats.summary())
        self.val_ids, stats = self.model.encode(self.val_samples)
        log.info("validation prompts: %s", stats.summary())
        self.prompt_stats: PromptStats = stats
        self.train_targets = torch.from_numpy(self.dataset.targets(self.train_samples))
        self.val_targets = self.dataset.targets(self.val_samples)
        self.lengths = [len(ids) for ids in self.train_ids]
        self.train_states: list[torch.Tensor] = []
        self.val_states: list[torch.Tensor] = []
        self.cache_cpu_seconds = 0.0
        self.state_cache: StateCache | None = None
        if self.model.frozen_layers:
            started, cpu = time.perf_counter(), time.process_time()
            self.state_cache = self._state_cache()
            self.train_states = self.lower_states(self.train_ids)
            self.val_states = self.lower_states(self.val_ids)
            if self.features_out or self.untrained_out:
                self.all_states()  # the other splits too, while the CPU-seconds are counted
            self.cache_cpu_seconds = time.process_time() - cpu
            log.info(
                "cached the %d frozen layers' output for %d prompts in %.0fs (%.0f CPU-s); "
                "training runs the top %d layers",
                self.model.frozen_layers,
                len(self.train_ids) + len(self.val_ids),
                time.perf_counter() - started,
                self.cache_cpu_seconds,
                self.model.layers_total - self.model.frozen_layers,
            )

        if self.untrained_out is not None and self.main:
            self.write_features(self.untrained_out, fine_tuned=False)  # LoRA B is still zero
        if config.head_init == "prior":
            self.set_prior()
        global_batch = config.batch_size * self.world
        self.micro_per_epoch = len(self._epoch(0))
        steps_per_epoch = max(1, math.ceil(self.micro_per_epoch / config.grad_accum))
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
        optimizer = torch.optim.AdamW(
            self.param_groups(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.scheduler = get_linear_schedule_with_warmup(
            optimizer, int(config.warmup_ratio * self.total_steps), self.total_steps
        )
        if self.deepspeed:  # no dataloader is prepared, so DeepSpeed cannot infer these
            plugin = self.accelerator.state.deepspeed_plugin
            if plugin.deepspeed_config.get("train_micro_batch_size_per_gpu", "auto") == "auto":
                plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
            if plugin.deepspeed_config.get("train_batch_size", "auto") == "auto":
                plugin.deepspeed_config["train_batch_size"] = global_batch * config.grad_accum
        self.wrapped, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        # The schedule is stepped here once per optimizer step (not prepared: accelerate
        # would step it once per process) and saved with the checkpoints.
        self.accelerator.register_for_checkpointing(self.scheduler)
        self.accelerator.register_save_state_pre_hook(self._save_trainable_only)
        self.accelerator.register_load_state_pre_hook(self._load_trainable_only)
        log.info(
            "%d train samples, %d validation; %d steps (%d per epoch), global batch %d x "
            "%d accumulation",
            len(self.train_ids),
            len(self.val_ids),
            self.total_steps,
            steps_per_epoch,
            global_batch,
            config.grad_accum,
        )

    def _state_cache(self) -> StateCache | None:
        """The on-disk cache of frozen states (``cache_dir``), for this exact backbone setting."""
        if not self.config.cache_dir:
            return None
        location = Path(self.model.backbone_location)
        weights = sorted(location.glob("*.safetensors")) if location.is_dir() else []
        setting = {
            "backbone": str(location),
            "weights": [[w.name, w.stat().st_size, w.stat().st_mtime_ns] for w in weights],
            "max_layers": self.config.max_layers,
            "frozen_layers": self.model.frozen_layers,
            "autocast": str(self.autocast),
        }
        if self.config.backbone_init != "pretrained":  # other weights, other states
            setting |= {"backbone_init": self.config.backbone_init, "seed": self.config.seed}
        return StateCache(Path(self.config.cache_dir), setting)

    def lower_states(self, ids: list[list[int]]) -> list[torch.Tensor]:
        """The frozen layers' output per prompt: read from ``cache_dir`` where held, computed
        (and added to it) where not."""
        size = self.config.eval_batch_size
        if self.state_cache is None:
            return self.model.lower_states(ids, size, self.autocast)
        found, missing = self.state_cache.lookup(ids)
        fresh = self.model.lower_states([ids[i] for i in missing], size, self.autocast)
        if self.main:
            self.state_cache.add([ids[i] for i in missing], fresh)
        for i, state in zip(missing, fresh, strict=True):
            found[i] = state
        log.info("frozen states: %d read from %s, %d computed", len(ids) - len(missing),
                 self.state_cache.file, len(missing))  # fmt: skip
        return [state for state in found if state is not None]

    def set_prior(self) -> None:
        """``head_init: prior`` from the frozen model's pooled states on training prompts
        (all of them from the cache, else up to ``PRIOR_SAMPLES``)."""
        size = self.config.eval_batch_size
        if self.config.pooling == "labels":  # normalises its own input: only the bias is set
            hidden = np.zeros((0, self.model.hidden_size), dtype=np.float32)
        elif self.train_states:
            _, hidden = self.model.predict_states(self.train_states, size, self.autocast)
        else:
            ids = self.train_ids[:PRIOR_SAMPLES]
            _, hidden = self.model.predict_ids(ids, size, self.autocast)
        self.model.set_prior(hidden, self.train_targets.numpy())
        self.model.train()
        log.info("output layer: standardised pooled state, bias at the drugs' log-odds")

    def param_groups(self) -> list[dict[str, Any]]:
        """LoRA adapters at ``lr``; the new output layer at ``head_lr`` when set."""
        head = [p for p in self.model.head.parameters() if p.requires_grad]
        rest = [
            p
            for n, p in self.model.named_parameters()
            if p.requires_grad and not n.startswith("head.")
        ]
        groups: list[dict[str, Any]] = [{"params": rest}] if rest else []
        head_group: dict[str, Any] = {"params": head}
        if self.config.head_lr:
            head_group["lr"] = self.config.head_lr
        return groups + [head_group]

    # ------------------------------------------------------------------ batches
    def micro_batch(self, index: int) -> list[int]:
        """This process's sample indices of global micro-batch ``index`` (any epoch)."""
        epoch, position = divmod(index, self.micro_per_epoch)
        batches = self._epoch(epoch)
        return shard(batches[position], self.rank, self.world)

    def _epoch(self, epoch: int) -> list[list[int]]:
        if getattr(self, "_cached_epoch", None) != epoch:
            self._cached_batches = epoch_batches(
                self.lengths,
                self.config.batch_size * self.world,
                self.config.seed,
                epoch,
                self.config.bucket_by_length,
            )
            # A last batch smaller than the process count would leave a process empty.
            if self.world > 1:
                self._cached_batches = [b for b in self._cached_batches if len(b) >= self.world]
            self._cached_epoch = epoch
        return self._cached_batches

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> float:
        """Validation PRAUC, the samples shared among processes."""
        from accelerate.utils import gather_object

        if not self.val_ids:
            return float("nan")
        mine = list(range(self.rank, len(self.val_ids), self.world))
        size = self.config.eval_batch_size
        if self.val_states:
            states = [self.val_states[i] for i in mine]
            probabilities, _ = self.model.predict_states(states, size, self.autocast)
        else:
            ids = [self.val_ids[i] for i in mine]
            probabilities, _ = self.model.predict_ids(ids, size, self.autocast)
        self.model.train()
        gathered = (
            gather_object([(mine, probabilities)]) if self.world > 1 else [(mine, probabilities)]
        )
        full = np.zeros_like(self.val_targets)
        for rows, values in gathered:
            full[rows] = values
        return compute(self.val_targets, full, self.config.threshold)["prauc"]

    # ------------------------------------------------------------------ checkpoints
    def _save_trainable_only(self, models: list[Any], weights: list[Any], folder: str) -> None:
        """save_state hook: the trained tensors instead of the whole (frozen) backbone."""
        from safetensors.torch import save_file

        if weights:  # empty under DeepSpeed, which writes its own model checkpoint
            weights.clear()
            if self.main:
                save_file(self.model.trainable_state(), Path(folder) / "trainable.safetensors")

    def _load_trainable_only(self, models: list[Any], folder: str) -> None:
        """load_state hook: the trained tensors back into the model (see the save hook)."""
        from safetensors.torch import load_file

        if not self.deepspeed:
            models.clear()
            self.model.load_trainable_state(load_file(Path(folder) / "trainable.safetensors"))

    def save_checkpoint(self, state: RunState) -> None:
        """accelerate's save_state into a fresh folder, state.json last, then swapped in."""
        target = self.out / "checkpoint"
        tmp = target.with_name(f".{target.name}.tmp")
        self.accelerator.wait_for_everyone()
        if self.main:
            _fresh(target)
        self.accelerator.wait_for_everyone()
        self.accelerator.save_state(str(tmp))
        self.accelerator.wait_for_everyone()
        if self.main:
            write_json_atomic(tmp / "state.json", state.__dict__ | {"world": self.world})
            _swap_in(tmp, target)
        self.accelerator.wait_for_everyone()

    def load_checkpoint(self) -> RunState | None:
        found = _existing(self.out / "checkpoint")
        if found is None:
            return None
        data = json.loads((found / "state.json").read_text(encoding="utf-8"))
        if data.pop("world", self.world) != self.world:
            raise LeaderError(
                f"{found}: written by a run on another number of processes; "
                "resume with the same `accelerate launch --num_processes`"
            )
        state = RunState(**data)
        self.accelerator.load_state(str(found))
        log.info("resumed from %s at step %d", found, state.step)
        return state

    def save_best(self, state: RunState) -> None:
        from safetensors.torch import save_file

        if not self.main:
            return
        target = self.out / "best"
        tmp = _fresh(target)
        save_file(self.model.trainable_state(), tmp / "trainable.safetensors")
        write_json_atomic(tmp / "state.json", {"step": state.step, "prauc": state.best_prauc})
        _swap_in(tmp, target)

    # ------------------------------------------------------------------ loop
    def run(self, resume: bool) -> RunState:
        config = self.config
        state = self.load_checkpoint() if resume else None
        if state is None:
            state = RunState()
            torch.manual_seed(config.seed + self.rank)  # dropout differs per process
        if state.finished:
            log.info("run already finished at step %d", state.step)
            return state
        self.wrapped.train()
        every = config.checkpoint_every or config.eval_every or max(1, self.total_steps // 10)
        started = time.perf_counter() - state.train_seconds
        cpu_started = time.process_time() - state.train_cpu_seconds
        if not state.step:
            cpu_started -= self.cache_cpu_seconds  # the cache is part of the training cost
        window_tokens, window_loss, window_batches = 0, 0.0, 0
        window_start = time.perf_counter()
        micro = state.step * config.grad_accum
        while state.step < self.total_steps and not state.stopped_early:
            rows = self.micro_batch(micro)
            micro += 1
            padded = (
                self.model.pad_states([self.train_states[i] for i in rows])
                if self.train_states
                else self.model.pad([self.train_ids[i] for i in rows])
            )
            batch = {k: v.to(self.accelerator.device) for k, v in padded.items()}
            labels = self.train_targets[rows].to(self.accelerator.device)
            with self.accelerator.accumulate(self.wrapped):
                with torch.autocast(
                    self.accelerator.device.type,
                    dtype=self.autocast,
                    enabled=self.autocast is not None,
                ):
                    out = self.wrapped(**batch, labels=labels)
                self.accelerator.backward(out.loss)
                if self.accelerator.sync_gradients and config.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            real = int(batch["attention_mask"].sum())
            state.train_tokens += real
            state.padded_tokens += int(batch["attention_mask"].numel())
            window_tokens += real
            window_loss += float(out.loss.detach())
            window_batches += 1
            if not self.accelerator.sync_gradients:
                continue
            self.scheduler.step()
            state.step += 1
            state.train_seconds = time.perf_counter() - started
            if (config.log_every and state.step % config.log_every == 0) or (
                state.step == self.total_steps
            ):
                elapsed = time.perf_counter() - window_start
                rate = state.train_seconds / state.step
                log.info(
                    "step %d/%d | loss %.4f | %.0f tok/s | lr %.2e | %s elapsed | ETA %s",
                    state.step,
                    self.total_steps,
                    window_loss / max(1, window_batches),
                    window_tokens * self.world / max(elapsed, 1e-9),
                    self.scheduler.get_last_lr()[0],
                    _duration(state.train_seconds),
                    _duration(rate * (self.total_steps - state.step)),
                )
                window_tokens, window_loss, window_batches = 0, 0.0, 0
                window_start = time.perf_counter()
            evaluate = (config.eval_every and state.step % config.eval_every == 0) or (
                state.step == self.total_steps
            )
            if evaluate:
                state.train_cpu_seconds = time.process_time() - cpu_started
                evaluation_started = time.process_time()
                self.after_evaluation(state, self.evaluate())
                cpu_started += time.process_time() - evaluation_started  # not training time
            if state.step == self.total_steps or state.stopped_early:
                break
            if every and state.step % every == 0:
                state.train_seconds = time.perf_counter() - started
                state.train_cpu_seconds = time.process_time() - cpu_started
                self.save_checkpoint(state)
            if evaluate or (every and state.step % every == 0):
                window_start, window_tokens = time.perf_counter(), 0  # tokens/s: training only
        state.train_seconds = time.perf_counter() - started
        state.train_cpu_seconds = time.process_time() - cpu_started
        return state

    def after_evaluation(self, state: RunState, prauc: float) -> None:
        state.history.append({"step": state.step, "val_prauc": prauc})
        state.history_cpu_seconds.append(state.train_cpu_seconds)
        if math.isnan(prauc) or prauc > state.best_prauc:
            state.best_prauc = -1.0 if math.isnan(prauc) else prauc
            state.best_step = state.step
            state.bad_evals = 0
            self.save_best(state)
            mark = " (best)"
        else:
            state.bad_evals += 1
            mark = f" (best {state.best_prauc:.4f} at step {state.best_step})"
            if self.config.patience and state.bad_evals >= self.config.patience:
                state.stopped_early = True
                mark += "; early stop"
        log.info("step %d: validation PRAUC %.4f%s", state.step, prauc, mark)

    # ------------------------------------------------------------------ artifact
    def all_states(self) -> list[torch.Tensor]:
        """Cached lower states of every sample of every split (:func:`all_samples` order);
        the frozen layers run only for samples not cached for training."""
        from leader.teacher.predict import all_samples

        if getattr(self, "_all_states", None) is None:
            mode = self.config.resolved_sample_mode(self.dataset.default_sample_mode)
            samples, _ = all_samples(self.dataset, mode)
            cached = dict(
                zip((s.sample_id for s in self.train_samples), self.train_states, strict=True)
            )
            cached |= dict(
                zip((s.sample_id for s in self.val_samples), self.val_states, strict=True)
            )
            missing = [s for s in samples if s.sample_id not in cached]
            if missing:
                ids, _ = self.model.encode(missing)
                fresh = self.lower_states(ids)
                cached |= dict(zip((s.sample_id for s in missing), fresh, strict=True))
            self._all_states = [cached[s.sample_id] for s in samples]
        return self._all_states

    def write_features(self, out_file: Path, fine_tuned: bool = True) -> None:
        """The features file for every sample of every split with the current weights
        (``fine_tuned=False``: the control before fine-tuning), from the cache when set."""
        from leader.teacher.predict import write_features

        size = self.config.eval_batch_size
        trained_on = str(self.out) if fine_tuned else ""
        if not self.model.frozen_layers:
            write_features(self.model, self.dataset_dir, out_file, size, trained_on)
        else:
            features = "hidden" if fine_tuned else "pooled"
            predicted = self.model.predict_states(self.all_states(), size, self.autocast, features)
            write_features(self.model, self.dataset_dir, out_file, size, trained_on, predicted)
        self.model.train()

    def finish(self, state: RunState) -> None:
        from safetensors.torch import load_file

        self.accelerator.wait_for_everyone()
        best = _existing(self.out / "best")
        if best is not None:
            self.model.load_trainable_state(load_file(best / "trainable.safetensors"))
        if self.main:
            self.model.save_pretrained(self.out)
            tokens = state.train_tokens * self.world
            seconds = max(state.train_seconds, 1e-9)
            metrics = {
                "best_val_prauc": state.best_prauc if state.best_prauc >= 0 else None,
                "best_step": state.best_step,
                "steps": state.step,
                "total_steps": self.total_steps,
                "stopped_early": state.stopped_early,
                "train_samples": len(self.train_ids),
                "val_samples": len(self.val_ids),
                "processes": self.world,
                "precision": str(self.autocast or "fp32"),
                "train_seconds": state.train_seconds,
                "train_cpu_seconds": state.train_cpu_seconds,
                "cache_cpu_seconds": self.cache_cpu_seconds,
                "lora_layers": self.model.layers_total - self.model.frozen_layers,
                "train_tokens_per_second": tokens / seconds,
                "padding_share": 1 - state.train_tokens / max(1, state.padded_tokens),
                "history": state.history,
                "history_cpu_seconds": state.history_cpu_seconds,
            }
            write_json_atomic(self.out / "metrics.json", metrics)
            if self.features_out is not None:
                self.write_features(self.features_out)
            state.finished = True
            write_json_atomic(self.out / "state.json", state.__dict__)
            shutil.rmtree(self.out / "checkpoint", ignore_errors=True)
            log.info(
                "saved the teacher to %s (best validation PRAUC %s at step %d)",
                self.out,
                metrics["best_val_prauc"],
                state.best_step,
            )
        self.accelerator.wait_for_everyone()


def train_teacher(
    dataset_dir: Path,
    out_dir: Path,
    config: TeacherConfig,
    resume: bool = False,
    features_out: Path | None = None,
    untrained_out: Path | None = None,
) -> Path:
    """Fine-tune the teacher on ``dataset_dir``'s train split into the run folder ``out_dir``.

    ``resume=True`` continues from ``out_dir/checkpoint`` (after a kill, at any point).
    ``features_out``: also write the features file (as ``leader teacher predict`` does),
    from the frozen layers' cache when ``lora_layers`` is set (only the top layers run).
    ``untrained_out``: the same file before the first step (the "before fine-tuning"
    control for distillation).
    Returns ``out_dir``.
    """
    out_dir = Path(out_dir)
    config.validate()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not resume and (out_dir / "checkpoint").exists():
        raise LeaderError(
            f"{out_dir}: holds an unfinished run; pass --resume to continue it "
            "or choose another --out"
        )
    if resume and (out_dir / "state.json").is_file():
        done = json.loads((out_dir / "state.json").read_text(encoding="utf-8"))
        if done.get("finished"):
            return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(Path(dataset_dir), out_dir, config, features_out, untrained_out)
    handlers = _attach_run_log(out_dir) if trainer.main else []
    if trainer.main:
        if resume and (out_dir / "config.yaml").is_file():
            saved = TeacherConfig.from_yaml(out_dir / "config.yaml")
            if saved != config:
                log.warning("resuming with a config that differs from %s/config.yaml", out_dir)
        config.to_yaml(out_dir / "config.yaml")
    try:
        trainer.build()
        state = trainer.run(resume)
        trainer.finish(state)
    finally:
        _detach_run_log(handlers)
    return out_dir
