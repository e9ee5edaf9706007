"""A patient's record as a text prompt for the LLM teacher (LEADER, arXiv 2402.02803, §Prompt).

The wording follows the authors' template ("The patient has N previous visits. In visit k, the
patient had diagnoses: ...; procedures: ...; was prescribed: .... In this visit, the patient
has diagnoses: ...; procedures: .... The patient should be prescribed:"), without their
defects: every history visit shows its *own* codes, a code without a name appears as the
code, the profile is a sentence of its own, and a token budget drops the oldest history
first, then the profile, and cuts the current visit's lists (from the end, marked "and N
more", counted) only as a last resort, so a prompt never exceeds its budget.

Templates are plain format strings (:class:`PromptTemplate`); a YAML or JSON file with any
subset of its fields replaces them without code changes.

>>> from leader.data.store import Sample, Visit, Vocabulary
>>> vocab = Vocabulary(codes={"diagnosis": ["d1"], "procedure": ["x1"], "medication": ["m1"]},
...                    names={"diagnosis": {"d1": "Hypertension"}})
>>> now = Visit("v2", None, ("d1",), ("x1",), ())
>>> before = Visit("v1", None, ("d1",), (), ("m1",))
>>> builder = PromptBuilder(vocab, PromptConfig(profile=False))
>>> print(builder.build(Sample("p:v2", "p", (before,), now)).text)
The patient has 1 previous visit. In visit 1, the patient had diagnoses: Hypertension; \
procedures: none; was prescribed: m1. In this visit, the patient has diagnoses: \
Hypertension; procedures: x1. The patient should be prescribed:
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from leader.data.store import KINDS, UNKNOWN, Sample, Visit, Vocabulary
from leader.errors import LeaderError

TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class PromptTemplate:
    """Format strings of the prompt; placeholders in braces (listed per field)."""

    # {n} previous visits, {visits} = "visit"/"visits"
    header: str = "The patient has {n} previous {visits}."
    # {items}: the profile fields joined with `separator`
    profile: str = "Patient profile: {items}."
    # {field}, {value}: one profile field ("insurance: Medicare")
    profile_item: str = "{field}: {value}"
    # {k} (1-based position among all the patient's visits), {diagnoses}, {procedures},
    # {medications}
    history_visit: str = (
        "In visit {k}, the patient had diagnoses: {diagnoses}; procedures: {procedures}; "
        "was prescribed: {medications}."
    )
    # {diagnoses}, {procedures}
    current_visit: str = (
        "In this visit, the patient has diagnoses: {diagnoses}; procedures: {procedures}."
    )
    # the question the medication output layer answers
    question: str = "The patient should be prescribed:"
    # between the items of a list
    separator: str = ", "
    # an empty list
    empty: str = "none"
    # appended to a list cut by the token budget; {n} = items left out
    more: str = " and {n} more"
    # between the sentences
    joiner: str = " "

    @classmethod
    def from_file(cls, path: str | Path) -> PromptTemplate:
        """Read a YAML or JSON file holding any subset of the fields; the rest keep defaults."""
        source = Path(path)
        if not source.is_file():
            raise LeaderError(f"{source}: prompt template file not found")
        text = source.read_text(encoding="utf-8")
        try:
            if source.suffix.lower() == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
        except Exception as exc:  # json.JSONDecodeError, yaml.YAMLError
            raise LeaderError(f"{source}: not valid YAML/JSON ({exc})") from exc
        if not isinstance(data, dict):
            raise LeaderError(f"{source}: a prompt template is a mapping of field: format string")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LeaderError(
                f"{source}: unknown template field(s) {unknown}; known: {sorted(known)}"
            )
        template = cls(**{k: str(v) for k, v in data.items()})
        template.validate(str(source))
        return template

    def validate(self, where: str = "prompt template") -> None:
        """Fail early, naming the field, when a format string uses an unknown placeholder."""
        allowed = {
            "header": {"n", "visits"},
            "profile": {"items"},
            "profile_item": {"field", "value"},
            "history_visit": {"k", "diagnoses", "procedures", "medications"},
            "current_visit": {"diagnoses", "procedures"},
            "question": set(),
            "more": {"n"},
        }
        for name, keys in allowed.items():
            try:
                used = {p for _, p, _, _ in string.Formatter().parse(getattr(self, name)) if p}
            except ValueError as exc:
                message = f"{where}: field {name!r} is not a format string ({exc})"
                raise LeaderError(message) from exc
            extra = used - keys
            if extra:
                raise LeaderError(
                    f"{where}: field {name!r} uses unknown placeholder(s) {sorted(extra)}; "
                    f"allowed: {sorted(keys) or 'none'}"
                )


@dataclass(frozen=True)
class PromptConfig:
    """What goes into a prompt."""

    history_visits: int = 3  # most recent earlier visits shown (0 = none)
    profile: bool = True  # add the profile sentence (fields valued "unknown" are left out)
    max_tokens: int | None = None  # token budget per prompt (None = no budget)
    template: str | None = None  # YAML/JSON file overriding PromptTemplate fields
    code_names: bool = True  # codes by their names (False: the codes alone)


@dataclass
class Prompt:
    """One built prompt and what the budget did to it."""

    text: str
    tokens: int  # by the builder's counter
    dropped_visits: int = 0  # history visits dropped by the budget
    truncated_items: int = 0  # history list items dropped by the budget
    current_items_cut: int = 0  # current-visit list items dropped (last resort)
    over_budget: bool = False  # still over budget: even the fixed sentences do not fit

    @property
    def truncated(self) -> bool:
        return self.dropped_visits > 0 or self.truncated_items > 0 or self.current_items_cut > 0


@dataclass
class PromptStats:
    """Counts over many prompts, for the log."""

    prompts: int = 0
    truncated: int = 0  # prompts the budget shortened
    dropped_visits: int = 0
    truncated_items: int = 0
    current_cut: int = 0  # prompts whose current visit had to be cut to fit
    current_items_cut: int = 0
    over_budget: int = 0  # prompts still over budget (the fixed sentences alone exceed it)
    max_tokens_seen: int = 0
    total_tokens: int = 0
    per_prompt: list[int] = field(default_factory=list, repr=False)

    def add(self, prompt: Prompt) -> None:
        self.prompts += 1
        self.truncated += int(prompt.truncated)
        self.dropped_visits += prompt.dropped_visits
        self.truncated_items += prompt.truncated_items
        self.current_cut += int(prompt.current_items_cut > 0)
        self.current_items_cut += prompt.current_items_cut
        self.over_budget += int(prompt.over_budget)
        self.max_tokens_seen = max(self.max_tokens_seen, prompt.tokens)
        self.total_tokens += prompt.tokens

    def summary(self) -> str:
        mean = self.total_tokens / self.prompts if self.prompts else 0.0
        return (
            f"{self.prompts} prompts, mean {mean:.0f} tokens, max {self.max_tokens_seen}; "
            f"{self.truncated} truncated by the budget ({self.dropped_visits} history visits "
            f"dropped, {self.truncated_items} list items cut), {self.current_cut} with the "
            f"current visit cut ({self.current_items_cut} items), {self.over_budget} over budget"
        )


def word_count(text: str) -> int:
    """A tokenizer-free stand-in counter: whitespace-separated words."""
    return len(text.split())


@dataclass
class _Part:
    """A history visit being fitted: its position and (possibly shortened) code names."""

    k: int
    lists: dict[str, list[str]]
    cut: dict[str, int]


class PromptBuilder:
    """Builds prompts for samples of one dataset.

    ``count_tokens`` measures the budget; pass the backbone tokenizer's counter
    (``lambda s: len(tok(s).input_ids)``). Without it, words are counted.
    """

    def __init__(
        self,
        vocab: Vocabulary,
        config: PromptConfig | None = None,
        count_tokens: TokenCounter | None = None,
        template: PromptTemplate | None = None,
    ) -> None:
        self.vocab = vocab
        self.config = config or PromptConfig()
        if self.config.history_visits < 0:
            raise LeaderError(f"history_visits must be >= 0 (got {self.config.history_visits})")
        if self.config.max_tokens is not None and self.config.max_tokens <= 0:
            raise LeaderError(f"max_tokens must be positive or None (got {self.config.max_tokens})")
        if template is None:
            template = (
                PromptTemplate.from_file(self.config.template)
                if self.config.template
                else PromptTemplate()
            )
        template.validate()
        self.template = template
        self.count_tokens = count_tokens or word_count
        self.stats = PromptStats()

    # ------------------------------------------------------------------ pieces
    def _names(self, kind: str, codes: Sequence[str]) -> list[str]:
        if not self.config.code_names:
            return list(codes)
        return [self.vocab.name(kind, code) for code in codes]

    def _join(self, items: list[str], cut: int = 0) -> str:
        t = self.template
        if not items and not cut:
            return t.empty
        text = t.separator.join(items) if items else t.empty
        return text + (t.more.format(n=cut) if cut else "")

    def _profile_sentence(self, profile: dict[str, str]) -> str | None:
        t = self.template
        items = [
            t.profile_item.format(field=name.replace("_", " "), value=value)
            for name, value in profile.items()
            if value and value != UNKNOWN
        ]
        return t.profile.format(items=t.separator.join(items)) if items else None

    def _history_sentence(self, part: _Part) -> str:
        lists = {kind: self._join(part.lists[kind], part.cut[kind]) for kind in KINDS}
        return self.template.history_visit.format(
            k=part.k,
            diagnoses=lists["diagnosis"],
            procedures=lists["procedure"],
            medications=lists["medication"],
        )

    def _current_sentence(self, current: _Part) -> str:
        return self.template.current_visit.format(
            diagnoses=self._join(current.lists["diagnosis"], current.cut["diagnosis"]),
            procedures=self._join(current.lists["procedure"], current.cut["procedure"]),
        )

    def _current_part(self, visit: Visit) -> _Part:
        return _Part(
            k=0,
            lists={kind: self._names(kind, visit.codes(kind)) for kind in KINDS[:2]},
            cut={kind: 0 for kind in KINDS[:2]},
        )

    def _assemble(
        self, sample: Sample, parts: list[_Part], profile: str | None, current: _Part | None = None
    ) -> str:
        n = len(sample.history)
        t = self.template
        sentences = [t.header.format(n=n, visits="visit" if n == 1 else "visits")]
        if profile:
            sentences.append(profile)
        sentences.extend(self._history_sentence(p) for p in parts)
        sentences.append(self._current_sentence(current or self._current_part(sample.current)))
        sentences.append(t.question)
        return t.joiner.join(s for s in sentences if s)

    # ------------------------------------------------------------------ building
    def build(self, sample: Sample) -> Prompt:
        """The prompt of one sample, fitted to the budget; counted into ``self.stats``."""
        prompt = self._fit(sample)
        self.stats.add(prompt)
        return prompt

    def build_all(self, samples: Sequence[Sample]) -> list[str]:
        return [self.build(s).text for s in samples]

    def _fit(self, sample: Sample) -> Prompt:
        keep = self.config.history_visits
        first = max(0, len(sample.history) - keep) if keep else len(sample.history)
        parts = [
            _Part(
                k=k + 1,
                lists={kind: self._names(kind, visit.codes(kind)) for kind in KINDS},
                cut={kind: 0 for kind in KINDS},
            )
            for k, visit in enumerate(sample.history)
            if k >= first
        ]
        profile = self._profile_sentence(sample.profile) if self.config.profile else None
        text = self._assemble(sample, parts, profile)
        tokens = self.count_tokens(text)
        budget = self.config.max_tokens
        if budget is None or tokens <= budget:
            return Prompt(text, tokens)
        dropped = cut = 0
        # 1. Drop the oldest history visits, keeping the most recent one for step 2.
        while len(parts) > 1 and tokens > budget:
            parts.pop(0)
            dropped += 1
            text = self._assemble(sample, parts, profile)
            tokens = self.count_tokens(text)
        # 2. Cut the remaining history visit's lists from the end, the longest list first.
        while parts and tokens > budget:
            removed = self._cut_lists(parts[0], tokens - budget)
            if not removed:
                break
            cut += removed
            text = self._assemble(sample, parts, profile)
            tokens = self.count_tokens(text)
        # 3. Drop that visit too, then the profile; the current visit is never cut.
        if parts and tokens > budget:
            cut -= sum(parts[0].cut.values())
            parts.pop(0)
            dropped += 1
            text = self._assemble(sample, parts, profile)
            tokens = self.count_tokens(text)
        if profile and tokens > budget:
            profile = None
            text = self._assemble(sample, parts, profile)
            tokens = self.count_tokens(text)
        # 4. Last resort: cut the current visit's lists from the end (the principal
        # diagnosis comes first and stays longest), counted.
        current, current_cut = self._current_part(sample.current), 0
        while tokens > budget:
            removed = self._cut_lists(current, tokens - budget)
            if not removed:
                break
            current_cut += removed
            text = self._assemble(sample, parts, profile, current)
            tokens = self.count_tokens(text)
        return Prompt(text, tokens, dropped, cut, current_cut, over_budget=tokens > budget)

    def _cut_lists(self, part: _Part, excess: int) -> int:
        """Pop items worth about ``excess`` tokens (names counted alone) from the end of the
        longest lists; return how many items were popped."""
        removed = items = 0
        while removed < excess:
            longest = max(part.lists, key=lambda kind: len(part.lists[kind]))
            if not part.lists[longest]:
                break
            removed += max(1, self.count_tokens(part.lists[longest].pop()))
            part.cut[longest] += 1
            items += 1
        return items


def template_fields() -> dict[str, Any]:
    """The default template as a mapping (what a template file may override)."""
    default = PromptTemplate()
    return {f.name: getattr(default, f.name) for f in fields(PromptTemplate)}
