"""A tiny randomly initialised Llama + word-level tokenizer, saved as a real HF folder.

For tests (here and in other areas that need teacher features) and quick experiments: the
whole loading path is the real one, only the sizes are tiny.

>>> folder = make_tiny_backbone(tmp_path / "tiny-llama", ["some prompt text"])  # doctest: +SKIP
>>> config = TeacherConfig(model=str(folder))                                      # doctest: +SKIP
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
_WORDS = re.compile(r"\w+|[^\w\s]")


def make_tiny_backbone(
    folder: str | Path, texts: Iterable[str], hidden_size: int = 32, seed: int = 0
) -> Path:
    """Save a 2-layer Llama (hidden 32) and a word-level tokenizer built from ``texts``."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaModel, PreTrainedTokenizerFast

    words = sorted({w for text in texts for w in _WORDS.findall(text)})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        hidden_size=hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=2 * hidden_size,
        vocab_size=len(vocab),
        max_position_embeddings=2048,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=3,
    )
    root = Path(folder)
    LlamaModel(config).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root
