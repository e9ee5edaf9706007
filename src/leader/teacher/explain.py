"""LEADER(T)'s own explanation: its label-wise attention, split by token, mapped to items.

With ``pooling: labels`` (:class:`~leader.teacher.model.LabelAttentionHead`) the logit of
drug d is ``b_d + sum_t [a_dt (w_d . v_t) + m_d . x_t / T]``: attention weight times the
token's value read by the drug, plus the token's share of the mean read. Each term belongs
to one token, so the sum splits exactly by token. The prompt's tokens are then mapped back
to what they spell: a code's name (a diagnosis, procedure or earlier drug of a given
visit), a profile field, or else a word of the template ("prescribed", "visit").

>>> items = input_items(sample)                                           # doctest: +SKIP
>>> prob, found, values = attention_contributions(teacher, sample, items)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from leader.data.store import UNKNOWN, Sample
from leader.errors import LeaderError
from leader.explain import Item


def item_spans(teacher: Any, sample: Sample, items: Sequence[Item], text: str) -> list[
    tuple[int, int, Item]
]:
    """Character spans of the items' words in the prompt ``text``.

    Each visit's sentence is found by its template's opening words ("In visit 2, the
    patient had diagnoses: ", "In this visit, ..."), and a visit's items are looked for in
    its own sentence only, in the order the prompt writes them: a code that recurs in
    several visits maps to each visit's mention. Items the token budget left out (dropped
    visits, cut lists) are not found and get no span.
    """
    template = teacher.prompt_builder().template
    vocab = teacher.vocab
    now = len(sample.history)
    by_key = {(i.kind, i.code, i.visit): i for i in items}
    # (segment key, its opening words): profile, earlier visits oldest first, this visit
    anchors: list[tuple[int | None, str]] = [(None, _opening(template.profile, "items"))]
    anchors += [(p, _opening(template.history_visit, "diagnoses", k=p + 1)) for p in range(now)]
    anchors.append((now, _opening(template.current_visit, "diagnoses")))
    found: list[tuple[int, int | None]] = []  # (start, key)
    cursor = 0
    for key, opening in anchors:
        at = text.find(opening, cursor) if opening else -1
        if at >= 0:
            found.append((at, key))
            cursor = at + len(opening)
    question = text.rfind(template.question) if template.question else -1
    spans: list[tuple[int, int, Item]] = []
    for n, (start, key) in enumerate(found):
        last = question if question > start else len(text)
        end = found[n + 1][0] if n + 1 < len(found) else last
        for words, item in _written(template, sample, by_key, key, now, vocab):
            at = text.find(words, start, end)
            if at >= 0:
                spans.append((at, at + len(words), item))
                start = at + len(words)
    return spans


def _opening(form: str, placeholder: str, **values: Any) -> str:
    """The text of a template before ``{placeholder}`` (formatted), or "" when it has
    other placeholders there (then the segment cannot be found)."""
    head = form.split("{" + placeholder + "}")[0]
    try:
        return head.format(**values)
    except (KeyError, IndexError, ValueError):
        return ""


def _written(
    template: Any, sample: Sample, by_key: dict[Any, Item], key: int | None, now: int, vocab: Any
) -> list[tuple[str, Item]]:
    """(words, item) of one segment, in the order the default template writes them."""
    if key is None:
        return [
            (template.profile_item.format(field=name.replace("_", " "), value=value),
             by_key[("profile", name, None)])
            for name, value in sample.profile.items()
            if ("profile", name, None) in by_key and value and value != UNKNOWN
        ]  # fmt: skip
    visit = sample.current if key == now else sample.history[key]
    kinds = ("diagnosis", "procedure", "medication")[: 2 if key == now else 3]
    return [
        (vocab.name(kind, code), by_key[(kind, code, key)])
        for kind in kinds
        for code in dict.fromkeys(visit.codes(kind))
        if (kind, code, key) in by_key
    ]


def attention_contributions(
    teacher: Any, sample: Sample, items: Sequence[Item]
) -> tuple[np.ndarray, list[Item], np.ndarray]:
    """(probabilities (drugs,), the items found plus words, contributions (those, drugs)
    in logit units; they sum with the head's bias to the logit exactly)."""
    from leader.teacher.model import LabelAttentionHead

    head = teacher.head
    if not isinstance(head, LabelAttentionHead):
        raise LeaderError("the teacher's attention explains pooling: labels only")
    text = teacher.prompt_builder().build(sample).text
    ids = teacher.token_ids(text)
    encoding = teacher.tokenizer(text, return_offsets_mapping=True)
    offsets = [tuple(o) for o in encoding["offset_mapping"]]
    offsets += [(0, 0)] * (len(ids) - len(offsets))  # the EOS token_ids appended
    offsets = offsets[-len(ids) :]  # token_ids keeps the end of an over-long prompt
    captured: dict[str, torch.Tensor] = {}

    def keep(_: Any, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        captured["states"] = args[0]

    hook = head.register_forward_hook(keep)
    was_training = teacher.training
    teacher.eval()
    device = head.bias.device
    autocast = teacher.autocast_dtype()  # the backbone as predict_proba runs it
    try:
        with torch.no_grad():
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                teacher(**{k: v.to(device) for k, v in teacher.pad([ids]).items()})
            # The head again in float32, token by token (what its forward sums).
            x = head.norm(captured["states"][0].float())  # (T, H)
            keys, values = head.key(x), torch.tanh(head.value(x))  # (T, k)
            scores = keys @ head.queries.T * keys.shape[-1] ** -0.5  # (T, drugs)
            weights = scores.softmax(0)  # over tokens, per drug
            per_token = weights * (values @ head.weight.T) + head.mean(x) / x.shape[0]
            logits = per_token.sum(0) + head.bias
    finally:
        hook.remove()
        teacher.train(was_training)
    contributions = per_token.double().cpu().numpy()  # (T, drugs)
    spans = item_spans(teacher, sample, items, text)
    found: dict[Item, int] = {}
    rows: list[np.ndarray] = []
    for t, (start, end) in enumerate(offsets):
        owner = next((item for s, e, item in spans if start < e and end > s), None)
        if owner is None:
            word = text[start:end].strip() if end > start else teacher.tokenizer.decode([ids[t]])
            owner = Item("word", word.strip() or "(space)", None)
        if owner not in found:
            found[owner] = len(rows)
            rows.append(np.zeros(contributions.shape[1]))
        rows[found[owner]] += contributions[t]
    prob = torch.sigmoid(logits).double().cpu().numpy()
    return prob, list(found), np.stack(rows) if rows else np.zeros((0, len(prob)))
