"""Prompt length is checked where prompts come in, without torch: the control plane's token count
(pipeline/core/prompt_tokens.py, the ``tokenizers`` library) equals the workers' CLIP tokenizer's
(transformers), and a manifest line, the job's --prompt and `sam3v segment` refuse a prompt over
32 tokens or 1 KiB with a message naming the field; nothing of such a line is kept."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from pipeline.control.manifest import MAX_ITEM_BYTES, parse_manifest
from pipeline.core.errors import InputError
from pipeline.core.prompt_tokens import MAX_PROMPT_BYTES, TEXT_MAX_TOKENS, count_tokens
from tests.test_cli import assert_user_error, run

AT_LIMIT = " ".join(["dog"] * (TEXT_MAX_TOKENS - 2))  # 30 words + start and end tokens
OVER = AT_LIMIT + " dog"


def samples() -> list[str]:
    fixed = ["dog", "the ox horns", "A Dog   running\tfast!!", "café  naïve ÉLAN", "1234567890 things",
             "don't we'll they're", "😂😂😂 emoji 🐶", "x" * 300, "a_b-c.d/e", "汉字测试 中文",
             "<|endoftext|> tricky", "Ω≈ç√∫ µ≤≥÷", AT_LIMIT, OVER]
    rng = random.Random(19)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFG0123456789 !?.,'-_é😂汉\t\n"
    return fixed + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(200)]


def test_the_control_plane_counts_the_tokens_the_workers_tokenizer_does():
    from workers.model.tokenizer import build_clip_tokenizer

    reference = build_clip_tokenizer()
    assert {s: count_tokens(s) for s in samples()} == {s: len(reference(s).input_ids) for s in samples()}


def test_counting_needs_neither_torch_nor_transformers():
    code = ("import sys; from pipeline.core.prompt_tokens import count_tokens; assert count_tokens('dog') == 3; "
            "assert not {'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_a_manifest_line_over_the_limits_is_rejected_naming_the_field():
    lines = [{"id": "ok", "video": "s3://b/a.mp4", "prompt": AT_LIMIT},
             {"id": "long", "video": "s3://b/b.mp4", "prompt": OVER},
             {"id": "huge", "video": "s3://b/c.mp4", "prompts": ["dog", "x" * 1_000_000]},
             {"id": "url", "video": "https://example.com/" + "a" * MAX_ITEM_BYTES, "prompt": "dog"}]
    result = parse_manifest("\n".join(json.dumps(x) for x in lines).encode(), "m.jsonl")
    assert [i.id for i in result.items] == ["ok"]
    reasons = {r.line: r.reason for r in result.rejected}
    assert reasons[2].startswith("prompt: 'dog dog") and f"is {TEXT_MAX_TOKENS + 1} tokens" in reasons[2], reasons
    assert reasons[3].startswith("prompts: 'xxx") and f"is 1000000 bytes; a prompt is at most {MAX_PROMPT_BYTES}" in reasons[3]
    assert "a video's request is at most" in reasons[4], reasons
    assert all(len(r) < 300 for r in reasons.values()), "the message shows the prompt's start, not all of it"


def test_the_jobs_default_prompt_is_checked_once():
    with pytest.raises(InputError, match=rf"^--prompt: 'dog dog.* is {TEXT_MAX_TOKENS + 1} tokens"):
        parse_manifest(b'{"video": "s3://b/a.mp4"}\n', "m.jsonl", OVER)


def test_segment_refuses_a_long_prompt_before_the_model_loads(dog24, tmp_path):
    done = run("segment", dog24, "--prompt", OVER, "--model", tmp_path / "no-model", "--out", tmp_path / "o",
               "--device", "cpu")
    assert_user_error(done, f"--prompt: 'dog dog dog")
    assert f"is {TEXT_MAX_TOKENS + 1} tokens" in " ".join(done.stderr.split())
