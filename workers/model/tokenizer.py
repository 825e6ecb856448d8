"""Build SAM 3's CLIP tokenizer offline from the CLIP byte-pair vocabulary.

SAM 3's text encoder uses OpenAI CLIP's BPE (49408 tokens). The vocabulary file ships with the
package (MIT, from the public ``sam3`` assets; ``pipeline/core/assets``, where the control plane counts
prompt tokens with it too), so the tiny test model needs no network.
"""

from __future__ import annotations

from transformers import CLIPTokenizer

from pipeline.core.prompt_tokens import TEXT_MAX_TOKENS, clip_vocab_and_merges


def build_clip_tokenizer() -> CLIPTokenizer:
    vocab, merges = clip_vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token="<|endoftext|>",
        model_max_length=TEXT_MAX_TOKENS,
    )
