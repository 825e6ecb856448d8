"""How long a prompt may be, checked where prompts come in (manifest lines, the API, the CLI),
without torch or transformers.

SAM 3's text encoder takes 32 tokens of OpenAI CLIP's byte-pair encoding (start and end tokens
included). The workers tokenize with transformers (``workers.model.tokenizer``); here the same vocabulary
(``assets/bpe_simple_vocab_16e6.txt.gz``, shared with the workers) is loaded into the ``tokenizers``
library with CLIP's normalisation and splitting, which counts the same tokens
(tests/test_prompt_tokens.py compares the two). A byte bound comes first, so a 1 MB prompt is refused
without being tokenized, and is never stored in Redis.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from importlib import resources

TEXT_MAX_TOKENS = 32  # SAM 3's text encoder has 32 positions
# 30 tokens between the start and end tokens; CLIP's longest token is 32 bytes: no prompt within
# the token limit is longer than this (whitespace runs count once).
MAX_PROMPT_BYTES = 1024
_NUM_MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 256 bytes x2 + merges + 2 specials = 49408
START, END = "<|startoftext|>", "<|endoftext|>"
# CLIP's word pattern (transformers' CLIP converter, ``tokenizers`` regex syntax).
_CLIP_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable character table."""
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
def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    raw = resources.files("pipeline.core.assets").joinpath("bpe_simple_vocab_16e6.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : _NUM_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    tokens = list(bytes_to_unicode().values())
    tokens += [t + "</w>" for t in tokens]
    tokens += ["".join(pair) for pair in merges]
    tokens += [START, END]
    return {tok: i for i, tok in enumerate(tokens)}, merges


@lru_cache(maxsize=1)
def _tokenizer():
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import BPE

    vocab, merges = clip_vocab_and_merges()
    tok = Tokenizer(BPE(vocab=dict(vocab), merges=list(merges), unk_token=END, continuing_subword_prefix="",
                        end_of_word_suffix="</w>", fuse_unk=False))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                           normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([START, END])  # written in a prompt, each is one token, as in transformers
    tok.post_processor = processors.RobertaProcessing((END, vocab[END]), (START, vocab[START]),
                                                      add_prefix_space=False, trim_offsets=False)
    return tok


def count_tokens(text: str) -> int:
    """Tokens the text encoder sees for ``text``, start and end tokens included."""
    return len(_tokenizer().encode(text).ids)


def prompt_problem(text: str) -> str | None:
    """Why the prompt ``text`` (stripped) is refused, or None. The caller names the field."""
    size = len(text.encode())
    if size > MAX_PROMPT_BYTES:
        return f"{_show(text)} is {size} bytes; a prompt is at most {MAX_PROMPT_BYTES} (and {TEXT_MAX_TOKENS} tokens)"
    tokens = count_tokens(text)
    if tokens > TEXT_MAX_TOKENS:
        return (f"{_show(text)} is {tokens} tokens; SAM 3's text encoder takes at most {TEXT_MAX_TOKENS} "
                "(start and end tokens included): shorten it")
    return None


def _show(text: str) -> str:
    return repr(text) if len(text) <= 40 else repr(text[:40]) + "..."
