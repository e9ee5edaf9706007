"""LEADER(T): an LLM body with LoRA and a medication output layer (arXiv 2402.02803, §4.2).

The language-model head is not used. The hidden state of the last *real* token of the prompt
(EOS appended) goes through ``Linear(hidden, drugs, bias=False)``; the loss is binary
cross-entropy on the multi-hot medication target. So the teacher can never name a drug
outside the vocabulary. Only the LoRA adapters (peft) and the output layer are trained.

Pooling finds the last position whose attention mask is 1, and position ids are derived from
the mask, so left and right padding give the same hidden state.

``pooling: labels`` replaces the one pooled vector by per-drug attention over the prompt's
token states (:class:`LabelAttentionHead`): each drug finds the words that bear on it (a
diagnosis, an earlier prescription of the same class) wherever they sit in a long record.
``lora_r: 0`` keeps the whole backbone frozen: its output is computed once per prompt and
cached, and only the output layer trains, for many epochs at the cost of a few.

>>> teacher = LeaderTeacher.from_pretrained("runs/teacher")        # doctest: +SKIP
>>> probabilities = teacher.predict_proba(dataset.samples("test"))  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from leader.data.store import Sample, Vocabulary, write_json_atomic
from leader.errors import LeaderError
from leader.teacher.backbone import (
    BackboneSource,
    ensure_pad_token,
    keep_layers,
    layer_list,
    layer_span,
    load_backbone,
    load_tokenizer,
    randomize_if_asked,
    resolve_backbone,
)
from leader.teacher.config import TeacherConfig
from leader.teacher.prompts import PromptBuilder, PromptConfig, PromptStats

log = logging.getLogger("leader.teacher")

FORMAT_VERSION = 1


def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 matrix instructions (AMX-BF16 or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32).

    "auto": bf16 on GPUs that support it (else fp16); on CPUs bf16 only with native bf16
    instructions. Measured on a Sapphire Rapids VM (AMX-BF16), SmolLM2 with LoRA, one
    thread: bf16 autocast trains 1.25x and infers 1.25-1.55x faster than fp32.
    """
    if precision == "fp32":
        return None
    if precision == "fp16":
        if device.type != "cuda":
            raise LeaderError("precision fp16 needs a GPU; use bf16 or fp32 on a CPU")
        return torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_bf16() else None


def _frozen_dtype(config: TeacherConfig) -> torch.dtype | None:
    """Half-precision frozen backbone weights on a GPU running bf16/fp16 (half the memory);
    the LoRA adapters and the output layer stay float32."""
    if not torch.cuda.is_available():
        return None
    return resolve_precision(config.precision, torch.device("cuda"))


@dataclass
class TeacherOutput:
    loss: torch.Tensor | None  # BCE-with-logits, mean over samples and drugs
    logits: torch.Tensor  # (B, drugs)
    hidden: torch.Tensor  # (B, F): the features for distillation (see LeaderTeacher.forward)
    pooled: torch.Tensor  # (B, H): the pooled token state (last, or mean for mean/labels)


class LabelAttentionHead(nn.Module):
    """The medication output layer with per-drug attention over the prompt's tokens.

    ``states`` (B, T, H) are layer-normed; keys and values are projections to ``width``;
    drug d attends with its query q_d (softmax over the prompt's real tokens), and its logit
    is w_d . tanh-pooled value + a linear read of the mean state + b_d. One logit per drug of
    the vocabulary, as the paper's layer; what differs is that a drug need not share one
    pooled vector with 150 others (label-wise attention, as in CAML/LAAT for clinical
    coding). The logit vector is what the teacher knows about this visit: it is the
    ``hidden`` handed to distillation.
    """

    def __init__(self, hidden_size: int, drugs: int, width: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.key = nn.Linear(hidden_size, width)
        self.value = nn.Linear(hidden_size, width)
        self.queries = nn.Parameter(torch.randn(drugs, width) * 0.02)
        self.weight = nn.Parameter(torch.zeros(drugs, width))  # zero: starts at the bias
        self.bias = nn.Parameter(torch.zeros(drugs))
        self.mean = nn.Linear(hidden_size, drugs, bias=False)
        nn.init.zeros_(self.mean.weight)
        self.drop = nn.Dropout(dropout)

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) token states, (B, T) mask -> (B, drugs) logits."""
        x = self.norm(states.float())
        mask = attention_mask.to(x.dtype)  # (B, T)
        keys, values = self.key(x), torch.tanh(self.value(x))  # (B, T, k)
        scores = torch.einsum("btk,dk->bdt", keys, self.queries) * keys.shape[-1] ** -0.5
        scores = scores.masked_fill(mask[:, None, :] == 0, torch.finfo(scores.dtype).min)
        pooled = torch.einsum("bdt,btk->bdk", scores.softmax(-1), values)  # (B, drugs, k)
        mean = (x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
        return (self.drop(pooled) * self.weight).sum(-1) + self.mean(self.drop(mean)) + self.bias


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of the last 1 in each row of the mask, for left or right padding. (B,)"""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)  # (T,)
    return (attention_mask.long() * positions).argmax(dim=1)  # (B,)


def linear_module_names(model: nn.Module) -> set[str]:
    """Last name parts of the model's linear layers (q_proj, up_proj, dense, ...)."""
    from transformers.pytorch_utils import Conv1D

    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear | Conv1D)
    }


def frozen_layer_count(backbone: Any, config: TeacherConfig) -> int:
    """Layers below the LoRA-adapted top ``lora_layers`` (0 when every layer is adapted;
    all of them with ``lora_r: 0``, no adapters)."""
    total = int(backbone.config.num_hidden_layers)
    if config.lora_r == 0:
        return total
    return max(0, total - config.lora_layers) if config.lora_layers else 0


def add_lora(backbone: nn.Module, config: TeacherConfig) -> nn.Module:
    """Wrap the backbone with LoRA adapters on the configured targets that exist in it
    (on the top ``lora_layers`` layers only when set; none with ``lora_r: 0``)."""
    from peft import LoraConfig, get_peft_model

    if config.lora_r == 0:
        return backbone

    present = linear_module_names(backbone)
    targets = [t for t in config.lora_targets if t in present]
    missing = [t for t in config.lora_targets if t not in present]
    if not targets:
        raise LeaderError(
            f"none of lora_targets {config.lora_targets} is a linear layer of this backbone; "
            f"its linear layers are {sorted(present)}: set lora_targets in the teacher config"
        )
    if missing:
        log.warning("LoRA: %s not in this backbone; adapting %s", missing, targets)
    frozen = frozen_layer_count(backbone, config)
    layers: dict[str, Any] = {}
    if frozen:
        _, name, blocks = layer_list(backbone)
        layers = {"layers_to_transform": list(range(frozen, len(blocks))), "layers_pattern": name}
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        **layers,
    )
    return get_peft_model(backbone, lora)  # type: ignore[no-any-return]


class LeaderTeacher(nn.Module):
    """Backbone (+ LoRA) -> last real token's hidden state -> one logit per drug."""

    hidden_mean: torch.Tensor  # (H,) buffers: the standardisation before the head
    hidden_scale: torch.Tensor

    def __init__(
        self,
        backbone: Any,  # a transformers model, usually wrapped by peft
        tokenizer: Any,
        vocab: Vocabulary,
        config: TeacherConfig,
        backbone_location: str = "",
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.tokenizer = ensure_pad_token(tokenizer)
        self.vocab = vocab
        self.config = config
        self.backbone_location = backbone_location
        self.medication_codes: list[str] = list(vocab.codes["medication"])
        if not self.medication_codes:
            raise LeaderError("the dataset's medication vocabulary is empty: nothing to predict")
        self.hidden_size = int(backbone.config.hidden_size)
        # The longest input the backbone's positions allow (None: no such limit known).
        positions = getattr(backbone.config, "max_position_embeddings", None)
        self.max_positions: int | None = int(positions) if positions else None
        prior = config.head_init == "prior"
        drugs = len(self.medication_codes)
        self.head: LabelAttentionHead | nn.Linear = (
            LabelAttentionHead(self.hidden_size, drugs, config.label_width, config.head_dropout)
            if config.pooling == "labels"
            else nn.Linear(self.hidden_size, drugs, bias=prior)
        )
        # The width of ``hidden``, the features handed to distillation.
        self.feature_size = drugs if config.pooling == "labels" else self.hidden_size
        # Standardisation of the pooled state before the head (identity unless head_init is
        # "prior"; set from the frozen model's training-set statistics by the trainer).
        self.register_buffer("hidden_mean", torch.zeros(self.hidden_size))
        self.register_buffer("hidden_scale", torch.ones(self.hidden_size))
        body = backbone.get_base_model() if hasattr(backbone, "get_base_model") else backbone
        self.body = body  # the transformers model inside the peft wrapper
        self._takes_positions = "position_ids" in inspect.signature(body.forward).parameters
        self.layers_total = int(body.config.num_hidden_layers)
        self.frozen_layers = frozen_layer_count(body, config)  # run once and cached

    # ------------------------------------------------------------------ text -> ids
    def prompt_budget(self) -> int:
        """``max_tokens``, never beyond the backbone's positions (one left for EOS)."""
        if self.max_positions is None:
            return self.config.max_tokens
        return max(1, min(self.config.max_tokens, self.max_positions - 1))

    def prompt_builder(self) -> PromptBuilder:
        return PromptBuilder(
            self.vocab,
            PromptConfig(
                history_visits=self.config.history_visits,
                profile=self.config.profile,
                max_tokens=self.prompt_budget(),
                template=self.config.template,
                code_names=self.config.code_names,
            ),
            count_tokens=lambda text: len(self.token_ids(text)),
        )

    def token_ids(self, text: str) -> list[int]:
        """Token ids of one prompt, EOS appended when configured (the paper's pooled token)."""
        ids: list[int] = list(self.tokenizer(text)["input_ids"])
        eos = self.tokenizer.eos_token_id
        if self.config.append_eos and eos is not None and (not ids or ids[-1] != eos):
            ids.append(eos)
        if self.max_positions is not None and len(ids) > self.max_positions:
            ids = ids[-self.max_positions :]  # the question and EOS are at the end
        return ids

    def encode(self, samples: Sequence[Sample]) -> tuple[list[list[int]], PromptStats]:
        builder = self.prompt_builder()
        ids = [self.token_ids(builder.build(s).text) for s in samples]
        return ids, builder.stats

    def pad(self, batch: Sequence[Sequence[int]], side: str = "right") -> dict[str, torch.Tensor]:
        """Pad token ids into ``input_ids`` and ``attention_mask`` (B, T)."""
        width = max(len(ids) for ids in batch)
        pad_id = int(self.tokenizer.pad_token_id)
        input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, ids in enumerate(batch):
            span = slice(0, len(ids)) if side == "right" else slice(width - len(ids), width)
            input_ids[row, span] = torch.tensor(list(ids), dtype=torch.long)
            mask[row, span] = 1
        return {"input_ids": input_ids, "attention_mask": mask}

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,  # (B, T)
        attention_mask: torch.Tensor | None = None,  # (B, T)
        labels: torch.Tensor | None = None,  # (B, drugs) multi-hot
        lower_states: torch.Tensor | None = None,  # (B, T, H): cached frozen-layer output
    ) -> TeacherOutput:
        """Logits from token ids, or from the cached output of the frozen lower layers
        (``lower_states``, see :meth:`lower_states`): the same function either way."""
        assert attention_mask is not None
        kwargs: dict[str, Any] = {"attention_mask": attention_mask, "use_cache": False}
        if self._takes_positions:
            # Positions count real tokens only, so left padding does not shift them.
            kwargs["position_ids"] = (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)
        if lower_states is None:
            states = self.backbone(input_ids=input_ids, **kwargs).last_hidden_state  # (B, T, H)
        elif self.frozen_layers == self.layers_total:
            states = lower_states  # no LoRA: the cache is the whole backbone's output
        else:
            with layer_span(self.body, self.frozen_layers, self.layers_total):
                states = self.backbone(inputs_embeds=lower_states, **kwargs).last_hidden_state
        pooled = self.pool(states, attention_mask)  # (B, H)
        if isinstance(self.head, LabelAttentionHead):
            logits = self.head(states, attention_mask).float()  # (B, drugs)
            hidden = logits  # no single vector feeds this layer: its logits are the features
        else:
            hidden = pooled
            scaled = (hidden.float() - self.hidden_mean) / self.hidden_scale
            logits = self.head(scaled.to(self.head.weight.dtype)).float()  # (B, drugs)
        loss = None
        if labels is not None:
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.float())
        return TeacherOutput(loss=loss, logits=logits, hidden=hidden.float(), pooled=pooled.float())

    def pool(self, states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T, H) -> (B, H): the last real token's state (the paper), or the mean over
        real tokens (``pooling: mean`` or ``labels``)."""
        if self.config.pooling in ("mean", "labels"):
            mask = attention_mask.to(states.dtype).unsqueeze(-1)  # (B, T, 1)
            return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        rows = torch.arange(states.shape[0], device=states.device)
        return states[rows, last_token_index(attention_mask)]

    @torch.no_grad()
    def set_prior(self, hidden: np.ndarray, targets: np.ndarray) -> None:
        """``head_init: prior``: standardise with ``hidden``'s statistics (N, H) and start
        the bias at each drug's log-odds in ``targets`` (N, drugs); weights start at zero.
        The label-attention head normalises its input itself: only its bias is set."""
        share = np.clip(targets.mean(axis=0), 1e-4, 1 - 1e-4)
        log_odds = torch.from_numpy(np.log(share / (1 - share))).float()
        if isinstance(self.head, LabelAttentionHead):
            self.head.bias.copy_(log_odds)
            return
        mean, std = hidden.mean(axis=0), hidden.std(axis=0)
        self.hidden_mean.copy_(torch.from_numpy(mean).float())
        self.hidden_scale.copy_(torch.from_numpy(np.maximum(std, 1e-6)).float())
        assert self.head.bias is not None
        self.head.bias.copy_(log_odds)
        self.head.weight.zero_()

    @torch.no_grad()
    def lower_states(
        self,
        ids: Sequence[Sequence[int]],
        batch_size: int = 16,
        autocast: torch.dtype | None = None,
    ) -> list[torch.Tensor]:
        """The frozen lower layers' output per prompt, (T_i, H) each, in input order.

        Computed once; training then runs only the LoRA-adapted top layers on them.
        Stored in bf16 under bf16 autocast (half the memory), else float32.
        """
        if not self.frozen_layers:
            raise LeaderError("lower_states needs lora_layers > 0 in the teacher config")
        self.eval()
        device = self.head.weight.device
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(ids)
        store = torch.bfloat16 if autocast == torch.bfloat16 else torch.float32
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.pad([ids[i] for i in chosen]).items()}
            positions = (batch["attention_mask"].cumsum(dim=1) - 1).clamp(min=0)
            extra = {"position_ids": positions} if self._takes_positions else {}
            with (
                layer_span(self.body, 0, self.frozen_layers),
                torch.autocast(device.type, dtype=autocast, enabled=autocast is not None),
            ):
                states = self.backbone(**batch, **extra, use_cache=False).last_hidden_state
            for row, i in enumerate(chosen):
                out[i] = states[row, : len(ids[i])].to("cpu", store).clone()  # (T_i, H)
        return out

    def pad_states(self, states: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Right-pad cached lower states into ``lower_states`` (B, T, H) + ``attention_mask``."""
        width = max(int(s.shape[0]) for s in states)
        batch = torch.zeros((len(states), width, self.hidden_size), dtype=torch.float32)
        mask = torch.zeros((len(states), width), dtype=torch.long)
        for row, state in enumerate(states):
            batch[row, : state.shape[0]] = state.float()
            mask[row, : state.shape[0]] = 1
        return {"lower_states": batch, "attention_mask": mask}

    @torch.no_grad()
    def predict_states(
        self,
        states: Sequence[torch.Tensor],
        batch_size: int = 16,
        autocast: torch.dtype | None = None,
        features: str = "hidden",
    ) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`predict_ids` from cached lower states: probabilities and features."""
        self.eval()
        device = self.head.weight.device
        order = sorted(range(len(states)), key=lambda i: int(states[i].shape[0]))
        probabilities = np.zeros((len(states), len(self.medication_codes)), dtype=np.float32)
        hidden = np.zeros((len(states), self.features_width(features)), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            batch = {
                k: v.to(device) for k, v in self.pad_states([states[i] for i in chosen]).items()
            }
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = self(**batch)
            probabilities[chosen] = torch.sigmoid(out.logits).float().cpu().numpy()
            hidden[chosen] = getattr(out, features).float().cpu().numpy()
        return probabilities, hidden

    @torch.no_grad()
    def predict_ids(
        self,
        ids: Sequence[Sequence[int]],
        batch_size: int = 16,
        autocast: torch.dtype | None = None,
        features: str = "hidden",
    ) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (N, drugs) and features (N, F) for tokenised prompts, in order:
        ``features="hidden"`` what distillation reads (:meth:`forward`), ``"pooled"`` the
        pooled token state (the "before fine-tuning" control).

        Batches are formed by length (less padding); results come back in input order.
        """
        self.eval()
        device = self.head.weight.device
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        probabilities = np.zeros((len(ids), len(self.medication_codes)), dtype=np.float32)
        hidden = np.zeros((len(ids), self.features_width(features)), dtype=np.float32)
        started = last = time.perf_counter()
        for start in range(0, len(order), batch_size):
            if time.perf_counter() - last > 30:  # a progress line every 30 s on long runs
                last = time.perf_counter()
                rate = start / (last - started)
                log.info("predicted %d/%d samples | %.1f samples/s | ETA %.0fs", start,
                         len(order), rate, (len(order) - start) / max(rate, 1e-9))  # fmt: skip
            chosen = order[start : start + batch_size]
            batch = {k: v.to(device) for k, v in self.pad([ids[i] for i in chosen]).items()}
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                out = self(**batch)
            probabilities[chosen] = torch.sigmoid(out.logits).float().cpu().numpy()
            hidden[chosen] = getattr(out, features).float().cpu().numpy()
        return probabilities, hidden

    def features_width(self, features: str) -> int:
        if features not in ("hidden", "pooled"):
            raise ValueError(f"features must be hidden or pooled (got {features!r})")
        return self.feature_size if features == "hidden" else self.hidden_size

    def autocast_dtype(self) -> torch.dtype | None:
        """The configured precision on this model's device (None = fp32)."""
        return resolve_precision(self.config.precision, self.head.weight.device)

    def predict_proba(self, samples: Sequence[Sample], batch_size: int | None = None) -> np.ndarray:
        """Drug probabilities (N, drugs), columns in ``medication_codes`` order."""
        ids, _ = self.encode(samples)
        size = batch_size or self.config.eval_batch_size
        return self.predict_ids(ids, size, self.autocast_dtype())[0]

    # ------------------------------------------------------------------ trainable state
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The trained tensors (LoRA + output layer), by parameter name, on CPU."""
        state = {
            name: param.detach().to("cpu", copy=True).contiguous()
            for name, param in self.named_parameters()
            if param.requires_grad
        }
        # the standardisation is set once, from data: it belongs with the trained tensors
        return state | {f"{n}": b.detach().cpu().clone() for n, b in self._head_buffers()}

    def _head_buffers(self) -> list[tuple[str, torch.Tensor]]:
        return [("hidden_mean", self.hidden_mean), ("hidden_scale", self.hidden_scale)]

    def load_trainable_state(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.named_parameters()) | dict(self._head_buffers())
        missing = [n for n, p in params.items() if p.requires_grad and n not in state]
        unknown = [n for n in state if n not in params]
        if missing or unknown:
            raise LeaderError(
                f"checkpoint does not match the model: missing {missing[:3]}, unknown "
                f"{unknown[:3]}; was it written with another backbone or LoRA config?"
            )
        with torch.no_grad():
            for name, tensor in state.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(
        cls, config: TeacherConfig, vocab: Vocabulary, source: BackboneSource | None = None
    ) -> LeaderTeacher:
        """A fresh teacher: backbone (first ``max_layers``), frozen, LoRA added, new head."""
        source = source or resolve_backbone(config.model)
        tokenizer = load_tokenizer(source)
        torch.manual_seed(config.seed)  # the same LoRA and head init on every process
        backbone = keep_layers(load_backbone(source, _frozen_dtype(config)), config.max_layers)
        randomize_if_asked(backbone, config)
        for param in backbone.parameters():
            param.requires_grad_(False)
        if config.gradient_checkpointing:
            backbone.gradient_checkpointing_enable(
                gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        return cls(add_lora(backbone, config), tokenizer, vocab, config, source.location)

    # ------------------------------------------------------------------ save / load
    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write adapter (peft), output layer (safetensors), vocabularies, tokenizer, config."""
        from safetensors.torch import save_file

        root = Path(directory)
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=root))
        try:
            if hasattr(self.backbone, "save_pretrained") and hasattr(self.backbone, "peft_config"):
                self.backbone.save_pretrained(tmp / "adapter")
            save_file(self.head_state(), tmp / "head.safetensors")
            self.tokenizer.save_pretrained(tmp / "tokenizer")
            write_json_atomic(tmp / "vocab.json", self.vocab.to_json())
            write_json_atomic(tmp / "medications.json", self.medication_codes)
            write_json_atomic(
                tmp / "teacher.json",
                {
                    "format_version": FORMAT_VERSION,
                    "backbone": self.config.model,
                    "backbone_location": self.backbone_location,
                    "hidden_size": self.hidden_size,
                    "drugs": len(self.medication_codes),
                    "config": self.config.to_dict(),
                },
            )
            for name in (
                "adapter",
                "tokenizer",
                "head.safetensors",
                "vocab.json",
                "medications.json",
                "teacher.json",
            ):
                source, target = tmp / name, root / name
                if not source.exists():
                    continue
                if target.is_dir():
                    shutil.rmtree(target)
                os.replace(source, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return root

    def head_state(self) -> dict[str, torch.Tensor]:
        """The output layer (its own tensor names: ``weight``, ``bias`` for the linear one)
        and the standardisation before it, as saved tensors."""
        standardise = {"mean": self.hidden_mean, "scale": self.hidden_scale}
        state = dict(self.head.state_dict()) | standardise
        return {k: v.detach().cpu().float().contiguous() for k, v in state.items()}

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike[str], device: str | torch.device = "cpu"
    ) -> LeaderTeacher:
        """Rebuild a trained teacher from its run folder (backbone loaded from its source)."""
        from peft import PeftModel
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        root = Path(directory)
        meta_path = root / "teacher.json"
        if not meta_path.is_file():
            raise LeaderError(f"{root}: no teacher.json; not a finished `leader teacher train` run")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise LeaderError(f"{meta_path}: format_version {meta.get('format_version')} unknown")
        config = TeacherConfig.from_dict(meta["config"], where=str(meta_path))
        location = meta.get("backbone_location") or ""
        source = location if location and Path(location).is_dir() else config.model
        dtype = _frozen_dtype(config) if torch.device(device).type == "cuda" else None
        backbone = keep_layers(load_backbone(resolve_backbone(source), dtype), config.max_layers)
        randomize_if_asked(backbone, config)
        if (root / "adapter").is_dir():
            backbone = PeftModel.from_pretrained(backbone, root / "adapter", is_trainable=True)
        tokenizer = AutoTokenizer.from_pretrained(root / "tokenizer")
        vocab = Vocabulary.from_json(json.loads((root / "vocab.json").read_text(encoding="utf-8")))
        model = cls(backbone, tokenizer, vocab, config, backbone_location=location)
        saved = load_file(root / "head.safetensors")
        expected = model.head.state_dict()
        wrong = [
            f"{name} {tuple(saved[name].shape) if name in saved else 'missing'} "
            f"(expected {tuple(tensor.shape)})"
            for name, tensor in expected.items()
            if name not in saved or saved[name].shape != tensor.shape
        ]
        if wrong:
            raise LeaderError(
                f"{root}/head.safetensors does not match the backbone, vocabulary and "
                f"pooling of its teacher.json: {'; '.join(wrong[:3])}"
            )
        with torch.no_grad():
            model.head.load_state_dict({name: saved[name] for name in expected})
            model.hidden_mean.copy_(saved.get("mean", model.hidden_mean))
            model.hidden_scale.copy_(saved.get("scale", model.hidden_scale))
        model.to(device)
        model.eval()
        return model
