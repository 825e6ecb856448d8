"""Settings from SAM3V_* environment variables: parsing, defaults and the cross-field rules."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from pipeline.core.settings import Settings, get_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SAM3V_"):
            monkeypatch.delenv(name)


def test_defaults_are_embedded_mode():
    s = get_settings()
    assert (s.broker_url, s.redis_url, s.effective_redis_url) == (None, None, None)
    assert (s.storage_url, s.model, s.url_allowlist) == ("./sam3v-data", "facebook/sam3", [])
    assert (s.chunk_seconds, s.task_time_limit, s.visibility_timeout, s.max_redeliveries) == (10.0, 1800, 3600, 3)
    assert (s.keep_chunks, s.url_max_bytes, s.url_timeout, s.torch_threads) == (False, 20 * 1024**3, 600.0, None)


def test_every_field_is_documented():
    for name, field in Settings.model_fields.items():
        assert field.description and "\n" not in field.description, name


def test_environment_is_read_on_every_call(monkeypatch):
    monkeypatch.setenv("SAM3V_STORAGE_URL", "s3://bucket/prefix")
    monkeypatch.setenv("SAM3V_MODEL", "/models/sam3")
    monkeypatch.setenv("SAM3V_CHUNK_SECONDS", "2.5")
    monkeypatch.setenv("SAM3V_KEEP_CHUNKS", "1")
    monkeypatch.setenv("SAM3V_URL_MAX_BYTES", "1000")
    monkeypatch.setenv("SAM3V_TORCH_THREADS", "4")
    monkeypatch.setenv("sam3v_max_redeliveries", "5")  # case-insensitive, as pydantic-settings reads it
    s = get_settings()
    assert (s.storage_url, s.model, s.chunk_seconds, s.keep_chunks, s.url_max_bytes, s.torch_threads,
            s.max_redeliveries) == ("s3://bucket/prefix", "/models/sam3", 2.5, True, 1000, 4, 5)
    monkeypatch.setenv("SAM3V_KEEP_CHUNKS", "false")
    assert get_settings().keep_chunks is False


@pytest.mark.parametrize("raw, expected", [
    ("127.0.0.1:8080,10.0.0.0/8,media.local", ["127.0.0.1:8080", "10.0.0.0/8", "media.local"]),
    (" a , b,,", ["a", "b"]),
    ("", []),
    ('["[fd00::1]:80", "x"]', ["[fd00::1]:80", "x"]),
])
def test_url_allowlist_parsing(monkeypatch, raw, expected):
    monkeypatch.setenv("SAM3V_URL_ALLOWLIST", raw)
    assert get_settings().url_allowlist == expected
    assert Settings(url_allowlist=expected).url_allowlist == expected


def test_visibility_timeout_must_exceed_the_task_time_limit(monkeypatch):
    monkeypatch.setenv("SAM3V_TASK_TIME_LIMIT", "3600")
    with pytest.raises(ValidationError, match="SAM3V_VISIBILITY_TIMEOUT"):
        get_settings()
    monkeypatch.setenv("SAM3V_VISIBILITY_TIMEOUT", "3601")
    assert get_settings().visibility_timeout == 3601
    with pytest.raises(ValidationError):
        Settings(task_time_limit=100, visibility_timeout=50)


@pytest.mark.parametrize("name, value", [("SAM3V_TASK_TIME_LIMIT", "soon"), ("SAM3V_CHUNK_SECONDS", "0"),
                                         ("SAM3V_MAX_REDELIVERIES", "0"), ("SAM3V_KEEP_CHUNKS", "perhaps"),
                                         ("SAM3V_TORCH_THREADS", "0")])
def test_bad_values_are_refused(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name.removeprefix("SAM3V_").lower()):
        get_settings()


@pytest.mark.parametrize("broker, redis, effective", [
    ("redis://r:6379/0", None, "redis://r:6379/0"),
    ("rediss://r:6380/1", None, "rediss://r:6380/1"),
    ("amqp://guest@rabbit//", None, None),
    ("amqp://guest@rabbit//", "redis://status:6379/2", "redis://status:6379/2"),
    ("redis://r:6379/0", "redis://other:6379/3", "redis://other:6379/3"),
    (None, None, None),
])
def test_redis_url_defaults_to_a_redis_broker(monkeypatch, broker, redis, effective):
    if broker:
        monkeypatch.setenv("SAM3V_BROKER_URL", broker)
    if redis:
        monkeypatch.setenv("SAM3V_REDIS_URL", redis)
    s = get_settings()
    assert (s.broker_url, s.redis_url, s.effective_redis_url) == (broker, redis, effective)
