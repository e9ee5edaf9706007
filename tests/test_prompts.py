"""Prompts: each history visit shows its own codes, names fall back to codes, the budget."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leader.data.store import Sample, Visit, VisitDataset, Vocabulary
from leader.errors import LeaderError
from leader.teacher.prompts import PromptBuilder, PromptConfig, PromptTemplate, word_count


def _sample(dataset: VisitDataset, sample_id: str) -> Sample:
    return next(s for s in dataset.samples(None, "all") if s.sample_id == sample_id)


def test_history_visits_show_their_own_codes(tiny_dataset: VisitDataset) -> None:
    text = PromptBuilder(tiny_dataset.vocab).build(_sample(tiny_dataset, "p1:v3")).text
    # v1: d1,d2 / x1 / m1,m2 ; v2: d2,d3 / x2 / m2,m3 ; current v3: d1 / x1,x2
    assert "The patient has 2 previous visits." in text
    assert (
        "In visit 1, the patient had diagnoses: Hypertension, Diabetes; "
        "procedures: Venous catheter; was prescribed: beta blocking agents, insulins."
    ) in text
    assert (
        "In visit 2, the patient had diagnoses: Diabetes, d3; procedures: x2; "
        "was prescribed: insulins, m3."
    ) in text
    assert (
        "In this visit, the patient has diagnoses: Hypertension; procedures: Venous catheter, x2."
    ) in text
    assert text.endswith("The patient should be prescribed:")
    # the current visit's medications are the target: never in the prompt
    assert text.count("beta blocking agents") == 1


def test_codes_without_names_appear_as_codes(tiny_dataset: VisitDataset) -> None:
    text = PromptBuilder(tiny_dataset.vocab).build(_sample(tiny_dataset, "p2:v5")).text
    assert "diagnoses: Heart failure, d5; procedures: x3." in text
    assert "was prescribed: diuretics, m5." in text


def test_profile_sentence_on_by_default_unknown_left_out(tiny_dataset: VisitDataset) -> None:
    on = PromptBuilder(tiny_dataset.vocab).build(_sample(tiny_dataset, "p6:v9")).text
    assert "Patient profile: gender: M, age band: 50-59." in on
    assert "insurance" not in on  # p6's insurance is missing -> "unknown" -> left out
    off = PromptBuilder(tiny_dataset.vocab, PromptConfig(profile=False))
    assert "profile" not in off.build(_sample(tiny_dataset, "p6:v9")).text


def test_single_visit_prompt(tiny_dataset: VisitDataset) -> None:
    text = PromptBuilder(tiny_dataset.vocab).build(_sample(tiny_dataset, "p3:v6")).text
    assert text.startswith("The patient has 0 previous visits.")
    assert "In visit" not in text


def _long_sample(visits: int = 6, codes: int = 8) -> tuple[Sample, Vocabulary]:
    history = tuple(
        Visit(
            f"v{k}",
            None,
            tuple(f"d{k}_{i}" for i in range(codes)),
            (f"x{k}",),
            tuple(f"m{k}_{i}" for i in range(codes)),
        )
        for k in range(visits)
    )
    current = Visit("now", None, tuple(f"c{i}" for i in range(codes)), ("xnow",), ())
    vocab = Vocabulary(codes={"diagnosis": [], "procedure": [], "medication": []})
    return Sample("p:now", "p", history, current, {"sex": "F"}), vocab


def test_history_visits_keeps_the_most_recent() -> None:
    sample, vocab = _long_sample()
    text = PromptBuilder(vocab, PromptConfig(history_visits=3)).build(sample).text
    assert "The patient has 6 previous visits." in text
    assert [f"In visit {k}," in text for k in range(1, 7)] == [False] * 3 + [True] * 3
    none = PromptBuilder(vocab, PromptConfig(history_visits=0)).build(sample).text
    assert "In visit" not in none


def test_budget_drops_oldest_history_first_then_cuts_lists() -> None:
    sample, vocab = _long_sample()
    full = PromptBuilder(vocab, PromptConfig()).build(sample)
    # Room for about two history visits: the oldest shown one goes first.
    one_visit = word_count("In visit 6, ... ") + 2 * 8 + 8
    budget = full.tokens - one_visit + 4
    builder = PromptBuilder(vocab, PromptConfig(max_tokens=budget))
    prompt = builder.build(sample)
    assert prompt.tokens <= budget
    assert prompt.dropped_visits == 1 and "In visit 4," not in prompt.text
    assert "In visit 5," in prompt.text and "In visit 6," in prompt.text
    # Tighter: one history visit left, its lists cut from the end, marked.
    current_only = PromptBuilder(vocab, PromptConfig(history_visits=0)).build(sample).tokens
    tight = PromptBuilder(vocab, PromptConfig(max_tokens=current_only + 24)).build(sample)
    assert tight.tokens <= current_only + 24
    assert "In visit 6," in tight.text and "In visit 5," not in tight.text
    assert tight.truncated_items > 0 and "more" in tight.text
    assert builder.stats.truncated == 1 and builder.stats.prompts == 1


def test_budget_cuts_the_current_visit_only_as_a_last_resort() -> None:
    sample, vocab = _long_sample(codes=30)
    fixed = PromptBuilder(vocab, PromptConfig(history_visits=0, profile=False))
    whole = fixed.build(sample)
    budget = whole.tokens - 10
    builder = PromptBuilder(vocab, PromptConfig(max_tokens=budget))
    prompt = builder.build(sample)
    # History and profile went first; then the current visit's lists, from the end.
    assert "In visit" not in prompt.text and "profile" not in prompt.text
    assert prompt.tokens <= budget and not prompt.over_budget
    assert prompt.current_items_cut > 0 and builder.stats.current_cut == 1
    assert "c0," in prompt.text and "c29" not in prompt.text and "more" in prompt.text
    assert prompt.text.endswith("The patient should be prescribed:")
    # A budget below the fixed sentences: everything cut, still flagged as over budget.
    tiny = PromptBuilder(vocab, PromptConfig(max_tokens=5)).build(sample)
    assert tiny.over_budget and "c0" not in tiny.text
    # A current visit that fits is never cut.
    roomy = PromptBuilder(vocab, PromptConfig(max_tokens=whole.tokens)).build(sample)
    assert roomy.current_items_cut == 0 and "c29;" in roomy.text


def test_budget_uses_the_given_token_counter() -> None:
    sample, vocab = _long_sample()
    chars = PromptBuilder(vocab, PromptConfig(max_tokens=400), count_tokens=len).build(sample)
    assert chars.tokens == len(chars.text) <= 400


def test_template_file_changes_the_wording(tmp_path: Path, tiny_dataset: VisitDataset) -> None:
    path = tmp_path / "template.yaml"
    path.write_text(
        "header: 'Prior admissions: {n}.'\n"
        "question: 'Medications:'\n"
        "history_visit: '#{k}: dx {diagnoses} | px {procedures} | rx {medications}.'\n"
    )
    builder = PromptBuilder(tiny_dataset.vocab, PromptConfig(template=str(path)))
    text = builder.build(_sample(tiny_dataset, "p1:v3")).text
    assert text.startswith("Prior admissions: 2.")
    assert "#2: dx Diabetes, d3 | px x2 | rx insulins, m3." in text
    assert text.endswith("Medications:")


def test_bad_template_files_are_clear_errors(tmp_path: Path) -> None:
    unknown = tmp_path / "a.yaml"
    unknown.write_text("heder: 'x'\n")
    with pytest.raises(LeaderError, match="unknown template field"):
        PromptTemplate.from_file(unknown)
    placeholder = tmp_path / "b.json"
    placeholder.write_text('{"current_visit": "dx {diagnosis}"}')
    with pytest.raises(LeaderError, match="unknown placeholder"):
        PromptTemplate.from_file(placeholder)


def test_cli_prints_a_patient_prompt(tiny_dataset: VisitDataset) -> None:
    from leader.cli import app

    assert tiny_dataset.path is not None
    runner = CliRunner()
    result = runner.invoke(app, ["prompts", "--dataset", str(tiny_dataset.path), "--patient", "p1"])
    assert result.exit_code == 0, result.output
    assert "In visit 2, the patient had diagnoses: Diabetes, d3" in result.output
    assert "In this visit, the patient has diagnoses: Hypertension;" in result.output
    first = runner.invoke(
        app,
        ["prompts", "--dataset", str(tiny_dataset.path), "--patient", "p1", "--visit", "v1"],
    )
    assert first.exit_code == 0 and "0 previous visits" in first.output
    missing = runner.invoke(
        app, ["prompts", "--dataset", str(tiny_dataset.path), "--patient", "nobody"]
    )
    assert missing.exit_code != 0
