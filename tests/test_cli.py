"""`sam3v` as a user runs it: real subprocesses, exit codes and the one line they print."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import media

SAM3V = [sys.executable, "-m", "sam3v.cli"]


def run(*args, timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*SAM3V, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env=None if env is None else {**os.environ, **env})


def assert_user_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


@pytest.mark.parametrize(
    "make, needle",
    [
        (media.zero_byte, "empty"),
        (media.png_renamed_mp4, "not a video"),
        (media.audio_only, "no video stream"),
        (media.random_bytes, "not a video"),
    ],
    ids=["zero-byte", "png-renamed", "audio-only", "random-bytes"],
)
def test_bad_video_exits_2_naming_the_file(make, needle, media_dir, tiny_model_dir, tmp_path):
    bad = make(media_dir)
    done = run("segment", bad, "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path / "o", "--device", "cpu")
    assert_user_error(done, bad.name, needle)
    assert not (tmp_path / "o" / "masks.json").exists()


def test_missing_path_exits_2(tiny_model_dir, tmp_path):
    done = run("segment", tmp_path / "nope.mp4", "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path)
    assert_user_error(done, "nope.mp4")


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_exits_2(prompt, dog24, tiny_model_dir, tmp_path):
    done = run("segment", dog24, "--prompt", prompt, "--model", tiny_model_dir, "--out", tmp_path)
    assert_user_error(done, "--prompt", "empty")


def test_too_long_prompt_is_refused_with_the_token_count(dog24, tiny_model_dir, tmp_path):
    long_prompt = " ".join(["horn"] * 40)
    done = run("segment", dog24, "--prompt", long_prompt, "--model", tiny_model_dir, "--out", tmp_path)
    assert_user_error(done, "42 tokens", "at most 32")


def test_missing_model_says_how_to_get_one(dog24, tmp_path):
    done = run("segment", dog24, "--prompt", "dog", "--model", tmp_path / "no-model", "--out", tmp_path / "o")
    assert_user_error(done, "no-model", "sam3v model tiny", "HF_TOKEN")


def test_bad_outputs_option_exits_2(dog24, tiny_model_dir, tmp_path):
    done = run("segment", dog24, "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path, "--outputs", "gif")
    assert_user_error(done, "--outputs", "gif")


def test_segment_cli_end_to_end(dog24, tiny_model_dir, tmp_path):
    done = run("segment", dog24, "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path,
               "--max-frames", "6", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert "meaningless" in done.stderr
    assert (tmp_path / "overlay.mp4").stat().st_size > 0
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert doc["video"]["num_frames"] == 6
    assert f"masks: {tmp_path / 'masks.json'}" in done.stdout


def test_segment_cli_start_frame_and_detection_threshold(dog24, tiny_model_dir, tmp_path):
    done = run("segment", dog24, "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path,
               "--start-frame", "20", "--detection-threshold", "0.1", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [20, 21, 22, 23]
    assert (doc["params"]["start_frame"], doc["params"]["detection_threshold"]) == (20, 0.1)


@pytest.mark.parametrize("option, value, needles", [
    ("--start-frame", "-1", ("--start-frame -1", "0 or more")),
    ("--start-frame", "24", ("start_frame 24", "24 frames")),  # dog24: frames 0-23
    ("--detection-threshold", "1.5", ("--detection-threshold 1.5", "between 0 and 1")),
])
def test_bad_start_frame_or_threshold_exits_2(option, value, needles, dog24, tiny_model_dir, tmp_path):
    done = run("segment", dog24, "--prompt", "dog", "--model", tiny_model_dir, "--out", tmp_path,
               option, value, "--device", "cpu")
    assert_user_error(done, *needles)
    assert not (tmp_path / "masks.json").exists()


def test_model_tiny_command_saves_a_loadable_model(tmp_path):
    done = run("model", "tiny", tmp_path / "m")
    assert done.returncode == 0, done.stderr
    assert "meaningless" in done.stderr
    assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "tokenizer.json").is_file()


def test_help_explains_the_commands():
    done = run("--help")
    assert done.returncode == 0
    for word in ("segment", "model"):
        assert word in done.stdout
    seg = run("segment", "--help", env={"COLUMNS": "120"})  # at 80, rich cuts long option names short
    for opt in ("--prompt", "--out", "--model", "--no-apply-mask", "--outputs", "--max-frames", "--device",
                "--start-frame", "--detection-threshold"):
        assert opt in seg.stdout
