"""Load SAM 3 (model + tokenizer) once, on the requested device, or fail with a way forward."""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from transformers import AutoTokenizer, Sam3VideoModel

from pipeline.core.errors import InputError, ModelUnavailableError
from workers.model import cv_utils
from workers.model.model_source import (
    DEFAULT_MODEL,
    HOW_TO_GET_A_MODEL,
    check_model_source,
    looks_like_path,
)
from workers.model.object_batch import install as install_object_batch
from workers.model.tiny_model import TINY_WARNING, is_tiny_model_dir

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    model: Sam3VideoModel
    tokenizer: object
    device: torch.device
    source: str
    revision: str
    is_tiny: bool
    # SAM 3's mask NMS / hole filling / speck removal: which backend runs them, with which settings
    postprocess: cv_utils.Postprocess

    @property
    def image_size(self) -> int:
        return int(self.model.config.image_size)

    @property
    def hotstart_delay(self) -> int:
        return int(self.model.hotstart_delay)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        # bf16 autocast on CUDA (weights stay fp32); full precision on CPU.
        return torch.bfloat16 if self.device.type == "cuda" else None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda: no CUDA device is available on this machine (use --device cpu)")
    if name not in ("cpu", "cuda"):
        raise InputError(f"--device {name!r}: expected auto, cpu or cuda")
    return torch.device(name)


def _local_revision(directory: Path) -> str:
    # Identifies the weights without hashing gigabytes: config plus each weight file's name and size.
    digest = hashlib.sha256((directory / "config.json").read_bytes())
    for weights in sorted(directory.glob("*.safetensors")):
        digest.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return "local-" + digest.hexdigest()[:16]


def _load_local(directory: Path) -> tuple[Sam3VideoModel, object, str]:
    try:
        model = Sam3VideoModel.from_pretrained(directory)
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:  # missing files, and weights cut short (safetensors raises its own class)
        raise ModelUnavailableError(f"cannot load the model in {directory}: {err}. {HOW_TO_GET_A_MODEL}") from err
    return model, tokenizer, _local_revision(directory)


def _load_hub(repo_id: str) -> tuple[Sam3VideoModel, object, str]:
    try:
        model = Sam3VideoModel.from_pretrained(repo_id)
        tokenizer = AutoTokenizer.from_pretrained(repo_id)
    except Exception as err:  # hub errors come in many classes (gated, offline, not found, HTTP)
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        token_hint = "" if os.environ.get("HF_TOKEN") else " HF_TOKEN is not set."
        raise ModelUnavailableError(
            f"cannot load model {repo_id!r} from Hugging Face ({reason}).{token_hint} {HOW_TO_GET_A_MODEL}"
        ) from err
    revision = getattr(model.config, "_commit_hash", None) or "unknown"
    return model, tokenizer, revision


def load_model(source: str = DEFAULT_MODEL, device: str = "auto", threads: int | None = None,
               object_batch: bool = True) -> LoadedModel:
    """Load the model before any video is read, so a missing model fails first and clearly.
    ``threads``: torch's CPU threads (SAM3V_TORCH_THREADS); None leaves torch's default.
    ``object_batch``: the tracker steps all objects without new inputs as batches
    (``workers.model.object_batch``, SAM3V_OBJECT_BATCH); False: transformers' per-object loop."""
    torch_device = resolve_device(device)
    # Before any weight is read: a missing model fails at once (no hub retries when offline).
    check_model_source(source)
    if threads:
        # CPU results depend on torch's thread count: every chunk of one video (any worker) and any
        # run they are compared with must use the same count.
        torch.set_num_threads(threads)
    # transformers warns on every frame once max_num_objects is reached, in a log nobody reads: the
    # chunk reports it once in the video's warnings instead (VideoTracker.object_cap_warning). Its
    # warning that mask NMS / hole filling are skipped cannot apply: cv_utils.install below makes
    # them run or fails the load.
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    expanded = Path(os.path.expanduser(source))
    if looks_like_path(source):
        model, tokenizer, revision = _load_local(expanded)
        tiny = is_tiny_model_dir(expanded)
    else:
        model, tokenizer, revision = _load_hub(source)
        tiny = False
    if tiny:
        log.info(TINY_WARNING)
    model = model.to(torch_device).eval()
    postprocess = cv_utils.install(model, torch_device)
    log.info("mask post-processing (NMS IoU %s, fill_hole_area %s) by %s on %s",
             postprocess.nms_threshold, postprocess.fill_hole_area, postprocess.backend, torch_device.type)
    install_object_batch(model, object_batch)
    return LoadedModel(model, tokenizer, torch_device, source, revision, tiny, postprocess)
