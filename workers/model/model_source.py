"""Is the model there? Answered without torch, CUDA or weights, in well under a second, so a
worker's parent, `sam3v segment` and `sam3v run` refuse a missing model before anything heavy.

A directory must hold a SAM 3 video ``config.json`` and weight files (whether they load is the
load's to say: a worker loads them before it consumes, ``workers.jobs.service``). A Hugging Face id must be in the local cache
or answer one request to the hub: without this check, a machine with no network spent 40 s in
huggingface_hub's retries (5 per file) before the one-line error.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from pipeline.core.errors import ModelUnavailableError

DEFAULT_MODEL = "facebook/sam3"
HUB_TIMEOUT_S = 5.0
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")  # what save_pretrained writes (sharded or not)

HOW_TO_GET_A_MODEL = (
    "Real weights: accept the licence at https://huggingface.co/facebook/sam3, set HF_TOKEN and use "
    "--model facebook/sam3 (or save it with save_pretrained and pass the directory). "
    "For a meaningless test model: `sam3v model tiny DIR` then --model DIR. "
    "`sam3v worker` and `sam3v api` read the model from SAM3V_MODEL instead of --model."
)


def looks_like_path(source: str) -> bool:
    # Hugging Face ids are exactly "owner/name"; anything else is a directory.
    return Path(source).expanduser().exists() or source.startswith((".", "/", "~")) or source.count("/") != 1


def check_local_model(directory: Path) -> None:
    """A save_pretrained directory of a SAM 3 video model (its config; weights are read by the load)."""
    if not directory.is_dir():
        raise ModelUnavailableError(f"model directory not found: {directory}. {HOW_TO_GET_A_MODEL}")
    config = directory / "config.json"
    if not config.is_file():
        raise ModelUnavailableError(f"{directory} holds no config.json (not a save_pretrained model). {HOW_TO_GET_A_MODEL}")
    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except ValueError as err:
        raise ModelUnavailableError(f"{config} is not valid JSON ({err}). {HOW_TO_GET_A_MODEL}") from err
    if model_type != "sam3_video":
        raise ModelUnavailableError(
            f"{directory} holds a {model_type!r} model, not a SAM 3 video model (sam3_video). {HOW_TO_GET_A_MODEL}")
    if not any(next(directory.glob(pattern), None) for pattern in WEIGHT_FILES):
        # A config alone (a copy that stopped early) passed this check and loaded nothing useful:
        # a worker then failed every video it took. Whether the weights load is the load's to say.
        raise ModelUnavailableError(f"{directory} holds config.json but no weights ({', '.join(WEIGHT_FILES)}): "
                                    f"an incomplete copy? {HOW_TO_GET_A_MODEL}")


def _go_offline() -> None:
    """The model is cached and the hub out of reach: later loads in this process (and the children
    it forks) read the cache at once instead of retrying the hub for every file. huggingface_hub
    and transformers both ask ``huggingface_hub.constants.is_offline_mode()``, which reads this."""
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True


def _hub_answer(repo_id: str) -> tuple[int | None, str]:
    """(HTTP status, reason) of one request for the model's config on the hub; status None when the
    hub cannot be reached. One try, no retries."""
    import httpx
    from huggingface_hub import constants, get_token

    url = f"{constants.ENDPOINT}/{repo_id}/resolve/main/config.json"
    token = get_token()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.head(url, headers=headers, timeout=HUB_TIMEOUT_S, follow_redirects=False)
    except httpx.HTTPError as err:
        return None, f"{constants.ENDPOINT} unreachable: {err or type(err).__name__}"
    return answer.status_code, answer.reason_phrase


def check_hub_model(repo_id: str) -> None:
    from huggingface_hub import constants, try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    where = f"the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    if constants.is_offline_mode():
        if not cached:
            raise ModelUnavailableError(f"model {repo_id!r} is not in {where} and HF_HUB_OFFLINE is set. {HOW_TO_GET_A_MODEL}")
        return
    status, reason = _hub_answer(repo_id)
    if status is None:
        if cached:
            _go_offline()
            return
        raise ModelUnavailableError(f"model {repo_id!r}: {reason}, and it is not in {where}. {HOW_TO_GET_A_MODEL}")
    if status in (401, 403):
        hint = "" if os.environ.get("HF_TOKEN") else " HF_TOKEN is not set."
        raise ModelUnavailableError(f"model {repo_id!r}: the hub refused access ({status} {reason}: gated, accept its "
                                    f"licence with the account of HF_TOKEN).{hint} {HOW_TO_GET_A_MODEL}")
    if status == 404:
        raise ModelUnavailableError(f"model {repo_id!r}: no such model on the hub (404). {HOW_TO_GET_A_MODEL}")
    if status >= 400 and not cached:
        raise ModelUnavailableError(f"model {repo_id!r}: the hub answered {status} {reason}. {HOW_TO_GET_A_MODEL}")


def check_model_source(source: str = DEFAULT_MODEL) -> None:
    """Raise ``ModelUnavailableError`` (with how to get a model) unless ``source`` can be loaded."""
    if looks_like_path(source):
        check_local_model(Path(os.path.expanduser(source)))
    else:
        check_hub_model(source)
