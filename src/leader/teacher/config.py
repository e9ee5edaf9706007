"""TeacherConfig: every default of the LLM teacher in one place (LEADER, arXiv 2402.02803).

Paper settings (LLaMA-7B): LoRA r=8, alpha=32, dropout 0.1 on q/k/v/o/gate/up/down, AdamW,
lr 2e-4, linear decay, effective batch 32, prompts up to 2,048 tokens. The defaults here fit
the small default backbone on a CPU; a YAML file or CLI flags override any field.

>>> config = TeacherConfig(max_steps=10)
>>> config.lora_r, config.max_steps
(8, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from leader.config import Config, option

if TYPE_CHECKING:
    from leader.data.store import SampleMode

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
DEFAULT_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class TeacherConfig(Config):
    """Backbone, prompt, LoRA and training settings of one teacher run."""

    # --- backbone and prompt
    model: str = option("smollm2-135m", "alias, local HF folder, GGUF file or hub id")
    max_layers: int = option(
        0, "keep only the first N transformer layers (0 = all; cheaper on CPU)"
    )
    sample_mode: str | None = option(None, '"all" or "last"; None = the dataset\'s default')
    backbone_init: str = option(
        "pretrained",
        "pretrained, or random: the same architecture with random weights (seeded by seed): "
        "the no-pretraining control",
    )
    code_names: bool = option(
        True, "codes appear by their names in the prompt (false: the codes alone: no words)"
    )
    history_visits: int = option(3, "most recent earlier visits in the prompt")
    profile: bool = option(True, "profile sentence in the prompt")
    max_tokens: int = option(512, "prompt token budget (oldest history dropped first)")
    template: str | None = option(None, "YAML/JSON prompt template file (None = built-in wording)")
    append_eos: bool = option(
        True, "end the prompt with EOS, whose hidden state feeds the output layer"
    )
    # --- LoRA (peft) and the medication output layer
    lora_r: int = option(
        8,
        "LoRA rank; 0 = no adapters: the backbone stays frozen, its output is computed once "
        "per prompt and cached, and only the output layer trains",
    )
    lora_alpha: int = option(32, "LoRA scaling numerator")
    lora_dropout: float = option(0.1, "dropout on the LoRA input")
    lora_targets: list[str] = option(
        factory=lambda: list(DEFAULT_TARGETS), help="module names that get LoRA adapters"
    )
    lora_layers: int = option(
        0,
        "LoRA on the top N layers only; the frozen layers below run once per prompt and their "
        "output is cached and reused every step (0 = LoRA on every layer, no cache)",
    )
    cache_dir: str | None = option(
        None,
        "folder that keeps the frozen layers' output between runs (seeds, learning curves, "
        "subsets reuse it; keyed by backbone, layers and prompt tokens); None = memory only",
    )
    head_lr: float = option(0.0, "learning rate of the medication output layer (0 = lr)")
    head_init: str = option(
        "default",
        '"prior": the output layer reads the pooled state standardised with the frozen '
        "model's training-set statistics and starts at each drug's log-odds (a bias); "
        '"default": nn.Linear\'s initialisation',
    )
    pooling: str = option(
        "last",
        'what the output layer reads: the "last" real token\'s state (the paper), the "mean" '
        'over tokens, or "labels": per-drug attention over every token (the logits are then '
        "the features handed to distillation)",
    )
    label_width: int = option(128, "pooling: labels: width of the per-drug keys and values")
    head_dropout: float = option(0.2, "pooling: labels: dropout inside the output layer")
    # --- optimisation
    batch_size: int = option(8, "samples per process per micro-batch")
    grad_accum: int = option(1, "micro-batches per optimizer step")
    lr: float = option(2e-4, "peak learning rate (AdamW)")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.05, "share of the steps with linear warm-up, then linear decay")
    max_grad_norm: float = option(1.0, "gradient clipping (0 = off)")
    epochs: float = option(1.0, "passes over the training samples (when max_steps is 0)")
    max_steps: int = option(0, "optimizer steps; 0 = derive from epochs")
    max_train_samples: int = option(0, "random subset of training samples (0 = all)")
    precision: str = option(
        "auto", "auto (bf16 on GPUs and bf16-capable CPUs), bf16, fp16 (GPU), fp32"
    )
    gradient_checkpointing: bool = option(
        False, "trade compute for memory (long prompts, big models)"
    )
    bucket_by_length: bool = option(True, "batch prompts of similar length (less padding)")
    seed: int = option(42, "data order, LoRA init, dropout")
    # --- evaluation, checkpoints, logging
    eval_every: int = option(50, "validation PRAUC every N optimizer steps (0 = end only)")
    max_eval_samples: int = option(0, "validation subset size during training (0 = all)")
    patience: int = option(5, "evaluations without improvement before stopping (0 = never stop)")
    checkpoint_every: int = option(
        0, "resumable checkpoint every N steps (0 = eval_every, or 1/10 run)"
    )
    eval_batch_size: int = option(16, "samples per forward pass in evaluation and prediction")
    threshold: float = option(0.5, "decision threshold for the teacher's metrics (paper: 0.5)")
    log_every: int = option(10, "progress line every N optimizer steps")
    threads: int = option(0, "torch CPU threads (0 = torch's default)")

    def __post_init__(self) -> None:
        self.validate("teacher config")

    def check(self) -> list[str]:
        problems: list[str] = []
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS} (got {self.precision!r})")
        if self.sample_mode not in (None, "all", "last"):
            problems.append(f"sample_mode must be all, last or null (got {self.sample_mode!r})")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "max_tokens", "label_width"):
            if int(getattr(self, name)) < 1:
                problems.append(f"{name} must be >= 1 (got {getattr(self, name)})")
        nonnegative = (
            "max_steps",
            "max_train_samples",
            "eval_every",
            "patience",
            "log_every",
            "max_layers",
            "checkpoint_every",
            "max_eval_samples",
            "threads",
            "lora_layers",
            "lora_r",
        )
        for name in nonnegative:
            if int(getattr(self, name)) < 0:
                problems.append(f"{name} must be >= 0 (got {getattr(self, name)})")
        if self.max_steps == 0 and self.epochs <= 0:
            problems.append("set max_steps > 0 or epochs > 0")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"warmup_ratio must be in [0, 1) (got {self.warmup_ratio})")
        if self.backbone_init not in ("pretrained", "random"):
            problems.append(f"backbone_init must be pretrained or random: {self.backbone_init!r}")
        if self.head_init not in ("default", "prior"):
            problems.append(f"head_init must be default or prior (got {self.head_init!r})")
        if self.pooling not in ("last", "mean", "labels"):
            problems.append(f"pooling must be last, mean or labels (got {self.pooling!r})")
        if not 0.0 <= self.head_dropout < 1.0:
            problems.append(f"head_dropout must be in [0, 1) (got {self.head_dropout})")
        if self.head_lr < 0:
            problems.append(f"head_lr must be >= 0 (got {self.head_lr})")
        if self.max_layers and self.lora_layers > self.max_layers:
            problems.append(
                f"lora_layers ({self.lora_layers}) must be <= max_layers ({self.max_layers})"
            )
        if not self.lora_targets:
            problems.append("lora_targets is empty")
        return problems

    @property
    def caches_frozen_states(self) -> bool:
        """Frozen layers run once per prompt and are cached (``lora_layers`` or ``lora_r: 0``)."""
        return self.lora_r == 0 or self.lora_layers > 0

    def resolved_sample_mode(self, dataset_default: str) -> SampleMode:
        """``sample_mode``, or the dataset's default when unset."""
        return "last" if (self.sample_mode or dataset_default) == "last" else "all"
