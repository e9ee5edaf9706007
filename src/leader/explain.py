"""Why this drug: per recommended drug, the input items that pushed it up or down.

An *item* is one thing in the patient's record a clinician could point at: a diagnosis or
procedure of the current visit, a diagnosis, procedure or drug of an earlier visit, or a
profile field. Each gets a signed contribution to each explained drug, strongest first.

Three methods, one output (:class:`Explanation`):

- ``occlusion`` (every model, the default): the exact effect of removing the item, all
  else kept: ``p(drug | record) - p(drug | record without the item)``, in probability.
  One batched ``predict_proba`` over the record and its ``items`` one-item-removed copies
  answers every drug at once; it needs nothing from the model but ``predict_proba``.
- ``integrated_gradients`` (LEADER(S)): Captum's integrated gradients over each item's
  presence weight, a scale on its embedding (0 = a zero embedding, 1 = as given). This is
  layer integrated gradients at the embedding with a zero baseline, summed over the
  embedding dimension per item, with item-level inputs so that a code is one feature even
  where the student shares a set between visits. In probability.
- ``attention`` (LEADER(T) with ``pooling: labels``): the teacher's own mechanism. Its
  drug logit is ``b_d + sum_t [a_dt (w_d . v_t) + m_d . x_t / T]`` over the prompt's tokens
  t (label-wise attention a, values v, mean read m); that sum is split by token exactly and
  each token is mapped back to the code or profile field whose words it spells (other
  tokens are reported as words). In logit units.

The README compares the methods' faithfulness (deletion curves) and cost
(``benchmarks/explain.py``).

>>> model = leader.models.load_deployed("runs/student")                    # doctest: +SKIP
>>> explain(model, [sample], top_items=5)[0][0].items[0]                    # doctest: +SKIP
Contribution(kind='diagnosis', code='4280', name='Congestive heart failure', ...)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from leader.data.store import Sample, Visit, Vocabulary
from leader.errors import LeaderError

METHODS: tuple[str, ...] = ("auto", "occlusion", "integrated_gradients", "attention")
DEFAULT_ITEMS = 5  # contributions listed per drug
MAX_ITEMS = 50  # the most a caller may ask for
IG_STEPS = 16  # integration steps (Gauss-Legendre: few steps integrate a smooth path well)
OCCLUSION_BATCH = 2048  # one-item-removed copies scored per predict_proba call


@dataclass(frozen=True)
class Item:
    """One input item. ``visit``: position among the patient's visits (the last is the
    current visit); None for a profile field (``code`` is then the field's name)."""

    kind: str  # diagnosis | procedure | medication | profile | word
    code: str
    visit: int | None

    def label(self, vocab: Vocabulary, sample: Sample | None = None) -> str:
        if self.kind == "profile":
            value = sample.profile.get(self.code, "") if sample is not None else ""
            return f"{self.code.replace('_', ' ')}: {value}"
        if self.kind == "word":
            return self.code
        return vocab.name(self.kind, self.code)


@dataclass(frozen=True)
class Contribution:
    kind: str
    code: str
    name: str
    visit: int | None  # None: profile field or word
    current: bool  # the item belongs to the current visit
    value: float  # signed: > 0 pushed the drug up

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "code": self.code,
            "name": self.name,
            "visit": self.visit,
            "current": self.current,
            "contribution": round(self.value, 4),
        }


@dataclass
class Explanation:
    """Why one drug: its probability and the strongest contributions, signed."""

    drug: str
    name: str
    probability: float
    items: list[Contribution]
    method: str
    unit: str  # "probability" or "logit"

    def to_json(self) -> dict[str, Any]:
        return {
            "drug": self.drug,
            "name": self.name,
            "probability": round(self.probability, 4),
            "method": self.method,
            "unit": self.unit,
            "because": [c.to_json() for c in self.items],
        }


# ------------------------------------------------------------------------------- items
def input_items(sample: Sample, profile_fields: Sequence[str] | None = None) -> list[Item]:
    """The record's items: current diagnoses and procedures, then earlier visits (newest
    first) with their drugs, then profile fields (those given; ``profile_fields`` keeps only
    the ones a model reads)."""
    now = len(sample.history)
    items = [Item(kind, code, now) for kind in ("diagnosis", "procedure")
             for code in dict.fromkeys(sample.current.codes(kind))]  # fmt: skip
    for position in range(now - 1, -1, -1):
        visit = sample.history[position]
        for kind in ("diagnosis", "procedure", "medication"):
            items.extend(Item(kind, code, position) for code in dict.fromkeys(visit.codes(kind)))
    wanted = set(profile_fields) if profile_fields is not None else None
    items.extend(
        Item("profile", name, None)
        for name in sample.profile
        if wanted is None or name in wanted
    )
    return items


def without(sample: Sample, removed: Sequence[Item]) -> Sample:
    """The sample with ``removed`` items taken out (a profile field becomes unknown)."""
    drop: dict[int | None, dict[str, set[str]]] = {}
    for item in removed:
        drop.setdefault(item.visit, {}).setdefault(item.kind, set()).add(item.code)
    visits = [*sample.history, sample.current]
    for position, kinds in drop.items():
        if position is None:
            continue
        visit = visits[position]
        visits[position] = Visit(
            visit.visit_id,
            visit.time,
            *(tuple(c for c in visit.codes(k) if c not in kinds.get(k, ()))
              for k in ("diagnosis", "procedure", "medication")),
        )  # fmt: skip
    fields = drop.get(None, {}).get("profile", set())
    profile = {k: v for k, v in sample.profile.items() if k not in fields}
    return dataclasses.replace(
        sample, history=tuple(visits[:-1]), current=visits[-1], profile=profile
    )


# ------------------------------------------------------------------------------- methods
PredictProba = Callable[[Sequence[Sample]], np.ndarray]


def occlusion(
    predict_proba: PredictProba, samples: Sequence[Sample], items: Sequence[Sequence[Item]]
) -> tuple[np.ndarray, list[np.ndarray]]:
    """(probabilities (N, drugs), per sample its (items, drugs) contributions
    ``p(record) - p(record without the item)``): exact, every drug at once."""
    variants: list[Sample] = []
    for sample, own in zip(samples, items, strict=True):
        variants.append(sample)
        variants.extend(without(sample, [item]) for item in own)
    prob = np.concatenate(
        [
            np.asarray(predict_proba(variants[start : start + OCCLUSION_BATCH]), np.float64)
            for start in range(0, len(variants), OCCLUSION_BATCH)
        ]
    )
    full, contributions, at = [], [], 0
    for own in items:
        full.append(prob[at])
        contributions.append(prob[at] - prob[at + 1 : at + 1 + len(own)])
        at += 1 + len(own)
    return np.stack(full), contributions


def integrated_gradients(
    student: Any, sample: Sample, items: Sequence[Item], drugs: Sequence[int], steps: int = IG_STEPS
) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities (drugs,), contributions (items, len(drugs))) of LEADER(S) by Captum's
    integrated gradients over the items' presence weights (module docstring)."""
    import torch
    from captum.attr import IntegratedGradients

    forward = presence_forward(student, sample, items)
    was_training = student.training
    student.eval()
    try:
        with torch.enable_grad():
            ones = torch.ones(len(drugs), len(items))
            attributions = IntegratedGradients(forward).attribute(
                ones, baselines=0.0, target=list(drugs), n_steps=steps
            )  # (drugs, items)
        with torch.no_grad():
            prob = forward(torch.ones(1, len(items)))[0]
    finally:
        student.train(was_training)
    return prob.double().numpy(), attributions.detach().double().numpy().T


def presence_forward(student: Any, sample: Sample, items: Sequence[Item]) -> Callable[[Any], Any]:
    """``f(weights (m, items)) -> probabilities (m, drugs)``: LEADER(S) on ``sample`` with
    each item's embedding scaled by its weight (1: as given, 0: a zero embedding)."""
    import torch

    from leader.student.data import EMPTY, STREAMS, kept_visits, make_batch

    encoded = student.encode([sample])
    base = make_batch(encoded, np.zeros(1, dtype=np.int64), with_targets=False)
    where = {item: i for i, item in enumerate(items)}
    kept, _ = kept_visits(sample, student.config.max_visits)
    first = len(sample.history) + 1 - len(kept)  # visit position of row 0
    # Per stream: one token row per kept visit (no sharing), and which item each token is.
    tokens, item_of = {}, {}
    for kind in STREAMS:
        rows = base.tokens[kind].index_select(0, base.set_index[kind])  # (S, L)
        owner = torch.full(rows.shape, -1, dtype=torch.long)
        for s, row in enumerate(rows.tolist()):
            visit = first + s - (1 if kind == "medication" else 0)
            for j, token in enumerate(row):
                if token > EMPTY:
                    owner[s, j] = where.get(Item(kind, student.space.decode(token)[1], visit), -1)
        tokens[kind], item_of[kind] = rows, owner
    fields = student.profile_vocab.fields
    profile_item = [where.get(Item("profile", f, None), -1) for f in fields]
    visits = int(base.visit_mask.shape[1])

    def scale(weights: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
        """(m, items) weights -> (m, *owner.shape): the weight of each token (1 if none)."""
        padded = torch.cat([weights, weights.new_ones(weights.shape[0], 1)], dim=1)
        return padded[:, torch.where(owner < 0, weights.shape[1], owner)]

    pending: list[torch.Tensor] = []

    def on_embedding(_: Any, __: Any, output: torch.Tensor) -> torch.Tensor:
        return output * pending.pop(0)[:, None]

    def forward(weights: torch.Tensor) -> torch.Tensor:
        m = weights.shape[0]
        batch = dataclasses.replace(
            base,
            tokens={k: t.repeat(m, 1) for k, t in tokens.items()},
            set_index={k: torch.arange(m * t.shape[0]) for k, t in tokens.items()},
            visit_index=(torch.arange(m)[:, None] * visits + base.visit_index[None, :]).reshape(-1),
            visit_mask=base.visit_mask.repeat(m, 1),
            profile_slot=base.profile_slot.repeat(m),
            profile=base.profile.repeat(m, 1),
        )
        for kind in STREAMS:
            flat = batch.tokens[kind].reshape(-1)
            pending.append(scale(weights, item_of[kind]).reshape(-1)[flat != 0])
        hooks = [student.embedding.register_forward_hook(on_embedding)]
        for f, module in enumerate(student.profile_embeddings):
            if profile_item[f] >= 0:
                w = weights[:, profile_item[f]]
                hooks.append(module.register_forward_hook(lambda _, __, out, w=w: out * w[:, None]))
        try:
            return torch.sigmoid(student(batch).logits)  # (m, drugs)
        finally:
            for hook in hooks:
                hook.remove()
            pending.clear()

    return forward


# ------------------------------------------------------------------------------- front
def unwrap(model: Any) -> Any:
    """The network under a deployed model / registry wrapper (``Deployed.model.model_``)."""
    inner = getattr(model, "model", model)  # Deployed -> recommender
    return getattr(inner, "model_", inner)  # StudentRecommender -> LeaderStudent


def choose_method(model: Any, method: str = "auto") -> str:
    """The method for ``model``: ``auto`` is attention for the label-attention teacher,
    occlusion for everything else (see the README's comparison)."""
    from leader.student.model import LeaderStudent

    if method not in METHODS:
        raise LeaderError(f"explain method {method!r} unknown; known: {', '.join(METHODS)}")
    net = unwrap(model)
    is_teacher = type(net).__name__ == "LeaderTeacher"
    if method == "auto":
        labels = is_teacher and getattr(net.config, "pooling", "") == "labels"
        return "attention" if labels else "occlusion"
    if method == "integrated_gradients" and not isinstance(net, LeaderStudent):
        raise LeaderError("integrated_gradients explains LEADER(S) only; use occlusion")
    if method == "attention" and not (is_teacher and net.config.pooling == "labels"):
        raise LeaderError("attention explains LEADER(T) with pooling: labels; use occlusion")
    return method


def explain(
    model: Any,
    samples: Sequence[Sample],
    drugs: Sequence[Sequence[str]] | None = None,
    top_items: int = DEFAULT_ITEMS,
    method: str = "auto",
    threshold: float | None = None,
) -> list[list[Explanation]]:
    """Per sample, one :class:`Explanation` per drug: ``drugs[i]`` (codes), or the drugs
    recommended at ``threshold`` (the model's decision threshold, else 0.5).

    ``model``: anything with ``vocab`` and ``predict_proba`` (a registry model, a
    ``Deployed`` folder, ``LeaderStudent``, ``LeaderTeacher``).
    """
    if not 1 <= top_items <= MAX_ITEMS:
        raise LeaderError(f"top_items must be between 1 and {MAX_ITEMS} (got {top_items})")
    method = choose_method(model, method)
    net = unwrap(model)
    vocab = model_vocab(model)
    drug_codes = list(vocab.codes["medication"])
    index = vocab.index("medication")
    if threshold is None:
        threshold = float(getattr(model, "threshold", 0.5))
    fields = _profile_fields(net)
    items = [input_items(s, fields) for s in samples]
    wanted: list[list[int]] | None = None
    if drugs is not None:
        if len(drugs) != len(samples):
            raise LeaderError(f"drugs: {len(drugs)} lists for {len(samples)} samples")
        wanted = []
        for codes in drugs:
            unknown = [c for c in codes if c not in index]
            if unknown:
                raise LeaderError(f"drugs: {unknown[:5]} not in the model's vocabulary")
            wanted.append([index[c] for c in codes])

    def pick(prob: np.ndarray, i: int) -> list[int]:
        if wanted is not None:
            return wanted[i]
        return [int(d) for d in np.argsort(-prob, kind="stable") if prob[d] >= threshold]

    out: list[list[Explanation]] = []
    if method == "occlusion":
        full, contributions = occlusion(model.predict_proba, samples, items)
        for i, sample in enumerate(samples):
            chosen = pick(full[i], i)
            values = contributions[i][:, chosen]
            out.append(_explanations(vocab, sample, items[i], chosen, full[i], values,
                                     method, "probability", top_items, drug_codes))  # fmt: skip
        return out
    for i, sample in enumerate(samples):
        if method == "integrated_gradients":
            chosen = pick(net.predict_proba([sample])[0], i)
            prob, values = integrated_gradients(net, sample, items[i], chosen)
            row = np.zeros(len(drug_codes))
            row[chosen] = prob[chosen]
            out.append(_explanations(vocab, sample, items[i], chosen, row, values,
                                     method, "probability", top_items, drug_codes))  # fmt: skip
        else:
            from leader.teacher.explain import attention_contributions

            row, token_items, values = attention_contributions(net, sample, items[i])
            chosen = pick(row, i)
            out.append(_explanations(vocab, sample, token_items, chosen, row, values[:, chosen],
                                     method, "logit", top_items, drug_codes))  # fmt: skip
    return out


def model_vocab(model: Any) -> Vocabulary:
    """The vocabulary of a model (``vocab``, or a baseline's learned ``vocab_``)."""
    for holder in (model, getattr(model, "model", None), unwrap(model)):
        for name in ("vocab", "vocab_"):
            try:
                vocab = getattr(holder, name, None)
            except AttributeError:  # Deployed.vocab of a baseline that names it vocab_
                continue
            if isinstance(vocab, Vocabulary):
                return vocab
    raise LeaderError(f"{type(model).__name__} has no vocabulary: is it fitted?")


def model_profile_fields(model: Any) -> list[str]:
    """The profile fields a (deployed) model reads; [] when it reads none."""
    return _profile_fields(unwrap(model)) or []


def _profile_fields(net: Any) -> list[str] | None:
    """The profile fields the model reads (None: any it is given)."""
    profile_vocab = getattr(net, "profile_vocab", None)
    return list(profile_vocab.fields) if profile_vocab is not None else None


def _explanations(
    vocab: Vocabulary,
    sample: Sample,
    items: Sequence[Item],
    chosen: Sequence[int],
    prob: np.ndarray,
    values: np.ndarray,  # (items, len(chosen))
    method: str,
    unit: str,
    top_items: int,
    drug_codes: Sequence[str],
) -> list[Explanation]:
    now = len(sample.history)
    result = []
    for column, drug in enumerate(chosen):
        scores = values[:, column] if len(items) else np.zeros(0)
        order = np.argsort(-np.abs(scores), kind="stable")[:top_items]
        contributions = [
            Contribution(
                items[j].kind,
                items[j].code,
                items[j].label(vocab, sample),
                items[j].visit,
                items[j].visit == now,
                float(scores[j]),
            )
            for j in order
            if scores[j] != 0
        ]
        code = drug_codes[drug]
        result.append(
            Explanation(code, vocab.name("medication", code), float(prob[drug]), contributions,
                        method, unit)  # fmt: skip
        )
    return result


# ------------------------------------------------------------------------------- serving
EXPLAIN_WORK = 250_000  # occluded codes one request may cost: sum over patients of items^2
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def parse_explain(values: dict[str, str]) -> int | tuple[str, str]:
    """From query values: 0 (no explanation) or the items per drug, or (path, problem).

    ``explain`` is true/false; ``explain_items`` 1..MAX_ITEMS (default DEFAULT_ITEMS).
    """
    text = values.get("explain", "false").lower()
    if text not in _TRUE and text not in _FALSE:
        return "query.explain", f"explain={_excerpt(values['explain'])}: use true or false"
    items = values.get("explain_items", str(DEFAULT_ITEMS))
    if not (items.isascii() and items.isdigit() and len(items) <= 3):
        return "query.explain_items", (
            f"explain_items={_excerpt(items)}: not an integer between 1 and {MAX_ITEMS}"
        )
    if not 1 <= int(items) <= MAX_ITEMS:
        message = f"explain_items={int(items)}: must be between 1 and {MAX_ITEMS}"
        return "query.explain_items", message
    return int(items) if text in _TRUE else 0


def explain_work(samples: Sequence[Sample]) -> int:
    """What occlusion costs: sum over samples of items x (items + 1) codes scored."""
    total = 0
    for sample in samples:
        n = len(input_items(sample))
        total += n * (n + 1)
    return total


def add_explanations(
    recommender: Any, prepared: Sequence[Any], results: Sequence[dict[str, Any]], top_items: int
) -> None:
    """Add ``explanations`` to formatted results (:meth:`leader.recommend.Recommender.format`):
    one per drug listed (recommended or ranked), in the order listed."""
    drugs = [
        list(dict.fromkeys(d["code"] for d in [*r["recommended"], *r["ranked"]]))
        for r in results
    ]
    explained = explain(recommender.model, [p.sample for p in prepared], drugs, top_items)
    for result, explanations in zip(results, explained, strict=True):
        result["explanations"] = [e.to_json() for e in explanations]


def _excerpt(text: str, limit: int = 20) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")
