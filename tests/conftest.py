"""Shared fixtures: the tiny SAM 3 model (built once per session) and real test media."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import media


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from workers.model.tiny_model import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny(tiny_model_dir):
    from workers.model.loading import load_model

    return load_model(str(tiny_model_dir), "cpu")


@pytest.fixture(scope="session")
def dog24(media_dir) -> Path:
    """The first 24 frames of a real clip, with its audio."""
    return media.clip(media_dir, 24)
