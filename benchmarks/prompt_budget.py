"""What a prompt budget keeps of the record, per split (issue 19, item 6: history that fits).

For each ``--max-tokens`` budget, builds every sample's teacher prompt with the backbone's
own tokenizer (no model forward: cheap) and prints, per split: prompts, mean and largest
token count, prompts whose current visit had to be cut and the items cut from it, history
visits dropped and history items cut. The budget is capped at the backbone's positions
(one kept for EOS), as the teacher does.

    .venv/bin/python benchmarks/prompt_budget.py --dataset data/eicu \\
        --max-tokens 320 512 1024 2048 --history-visits 3 10

Tokens are what the frozen layers pay for: the teacher's CPU cost grows about linearly with
them at these lengths.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True)
    parser.add_argument("--model", default="smollm2-135m", help="backbone whose tokenizer counts")
    parser.add_argument("--max-tokens", type=int, nargs="+", default=[320, 512, 1024, 2048])
    parser.add_argument("--history-visits", type=int, nargs="+", default=[3])
    args = parser.parse_args()

    from leader.data.store import VisitDataset
    from leader.teacher.backbone import load_tokenizer
    from leader.teacher.prompts import PromptBuilder, PromptConfig

    dataset = VisitDataset.load(args.dataset)
    tokenizer = load_tokenizer(args.model)
    positions = int(getattr(tokenizer, "model_max_length", 0) or 0)
    count = lambda text: len(tokenizer(text, add_special_tokens=False).input_ids)  # noqa: E731
    print(
        "| history visits | max tokens | split | prompts | mean tokens | largest | current visit "
        "cut (prompts / items) | history visits dropped | history items cut |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for history in args.history_visits:
        for budget in args.max_tokens:
            kept = min(budget, positions - 1) if 0 < positions < 10**9 else budget
            for split in ("train", "val", "test"):
                config = PromptConfig(history_visits=history, max_tokens=kept)
                builder = PromptBuilder(dataset.vocab, config, count_tokens=count)
                for sample in dataset.samples(split):
                    builder.build(sample)
                st = builder.stats
                mean = st.total_tokens / max(st.prompts, 1)
                print(
                    f"| {history} | {kept} | {split} | {st.prompts} | {mean:.0f} | "
                    f"{st.max_tokens_seen} | {st.current_cut} / {st.current_items_cut} | "
                    f"{st.dropped_visits} | {st.truncated_items} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
