"""Build SAM 3's CLIP tokenizer offline from the CLIP byte-pair vocabulary.

SAM 3's text encoder uses OpenAI CLIP's BPE (49408 tokens). The vocabulary file ships with the
package (MIT, from the public ``sam3`` assets), so the tiny test model needs no network.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

from transformers import CLIPTokenizer

TEXT_MAX_TOKENS = 32  # SAM 3's text encoder has 32 positions
_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 256 bytes x2 + merges + 2 specials = 49408


def _bytes_to_unicode() -> dict[int, str]:
    # CLIP/GPT-2's reversible byte -> printable character table.
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars)))


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files("workers.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    tokens = list(_bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {tok: i for i, tok in enumerate(tokens)}, merges


def build_clip_tokenizer() -> CLIPTokenizer:
    vocab, merges = _vocab_and_merges()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        pad_token="<|endoftext|>",
        model_max_length=TEXT_MAX_TOKENS,
    )
