"""StudentConfig: every default of LEADER(S) in one place (paper: MIMIC-III settings).

A light module (no torch): the CLI builds its flags from these fields.

>>> StudentConfig().alpha, StudentConfig().train.lr
(0.4, 0.0005)
"""

from __future__ import annotations

from dataclasses import dataclass

from leader.config import Config, TrainConfig, nested, option


@dataclass
class StudentConfig(Config):
    """Architecture, objective and training of the student; paper defaults (MIMIC-III)."""

    # --- architecture
    dim: int = option(64, "embedding and encoder width d")
    heads: int = option(4, "attention heads in every transformer layer")
    ffn: int = option(300, "feed-forward width in every transformer layer")
    dropout: float = option(0.4, "hidden dropout in the transformer layers")
    attn_dropout: float = option(0.1, "attention-probability dropout")
    hidden: int = option(128, "width of the patient vector (the head's first linear layer)")
    max_visits: int = option(10, "most recent visits kept per sample, the current one always")
    max_codes: int = option(100, "codes kept per set (the first ones in record order)")
    visit_positions: bool = option(True, "learned recency embedding per visit (not in the paper)")
    # --- objective
    alpha: float = option(0.4, "weight of the feature-distillation MSE (0 = no distillation)")
    kd: float = option(
        0.0,
        "weight of a soft-label BCE to the teacher's drug probabilities (0 = off; not in "
        "the paper, which distils hidden states only)",
    )
    choose_distillation: bool = option(
        True,
        "with teacher features, choose alpha and kd on validation PRAUC among distill_grid "
        "(a full training each); off: alpha and kd as given (the paper: 0.4 and 0)",
    )
    distill_grid: list[str] = option(
        factory=lambda: ["0:0", "0.4:0", "0.4:2", "0:2"],
        help="alpha:kd candidates of choose_distillation (0:0, no distillation, is always one)",
    )
    beta: float = option(0.005, "weight of the profile-alignment InfoNCE")
    align: bool = option(True, "use the profile-alignment term at all")
    temperature: float = option(1.0, "InfoNCE temperature on cosine similarities")
    standardize_teacher: bool = option(
        True, "z-score the teacher's hidden states per dimension (train statistics)"
    )
    # --- data and decision
    sample_mode: str | None = option(
        None, "samples per patient: all or last (null = the dataset's default)"
    )
    choose_threshold: bool = option(
        True, "pick the decision threshold maximising validation Jaccard (else `threshold`)"
    )
    threshold: float = option(0.5, "the fixed decision threshold when choose_threshold is off")
    group_patients: bool = option(
        True,
        "batches keep each patient's samples together (patients shuffled): their shared "
        "visits are encoded once per batch",
    )
    # --- optimisation (the loop every ID-based model shares)
    train: TrainConfig = nested(TrainConfig, "optimisation: epochs, batch, lr, patience, seed")

    def check(self) -> list[str]:
        problems = []
        if self.dim % self.heads:
            problems.append(f"dim {self.dim} must be divisible by heads {self.heads}")
        if self.max_visits < 1 or self.max_codes < 1:
            problems.append("max_visits and max_codes must be at least 1")
        if self.alpha < 0 or self.beta < 0 or self.kd < 0:
            problems.append("alpha, beta and kd must be >= 0")
        if self.temperature <= 0:
            problems.append("temperature must be > 0")
        if not 0 < self.threshold < 1:
            problems.append(f"threshold must be in (0, 1) (got {self.threshold})")
        try:
            self.candidates()
        except ValueError as exc:
            problems.append(str(exc))
        if self.sample_mode not in (None, "all", "last"):
            problems.append(f"sample_mode must be all, last or null (got {self.sample_mode!r})")
        return problems

    def candidates(self) -> list[tuple[float, float]]:
        """The (alpha, kd) pairs choose_distillation trains, (0, 0) first, no repeats."""
        out = [(0.0, 0.0)]
        for item in self.distill_grid:
            alpha, sep, kd = str(item).partition(":")
            try:
                pair = (float(alpha), float(kd))
            except ValueError:
                pair = (-1.0, -1.0)
            if not sep or min(pair) < 0:
                raise ValueError(f"distill_grid: {item!r} is not alpha:kd with both >= 0")
            if pair not in out:
                out.append(pair)
        return out
