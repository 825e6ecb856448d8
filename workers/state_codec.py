"""Tracker state codec: save a VideoTracker between two frames, continue it elsewhere exactly; never pickle.

A video is segmented as chunks, possibly on different machines: the worker that ends chunk k saves
its tracker, the worker for chunk k+1 restores it and pushes the next frame. Continuing a restored
tracker gives bit-identical masks to one continuous run.

Two files, written atomically (``workers.atomic_files``), the JSON last:

- ``tracker_state.safetensors``: every tensor (memory features, object pointers, masks, ...).
- ``tracker_state.json``: everything else as a versioned document (``format``, ``version``,
  ``transformers_version``), which names each tensor with its shape and dtype and records the size
  and sha256 of the safetensors file, so a state whose two halves come from different saves, a
  truncated file or an edited document is refused with a :class:`StateError` naming the file.

Nothing is unpickled and nothing is ``torch.load``-ed: reading a state from a bucket cannot run code.

The session (``Sam3VideoInferenceSession``, transformers 5.24) is captured attribute by attribute;
an attribute the codec does not know (a transformers upgrade that adds state) fails the capture
loudly instead of being silently dropped. See ``_SESSION_ATTRIBUTES`` for how each is carried.

Dropping the history the tracker never reads again, which keeps a state small, is
``workers.state_pruning``'s job.

API::

    state = TrackerState.capture(tracker)        # snapshot (tensors copied to CPU)
    state.to_files(directory)                     # or save_state(tracker, directory)
    state = TrackerState.from_files(directory)    # validates everything, raises StateError
    tracker = state.restore(loaded)               # or load_state(directory, loaded)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPTextModelOutput
from transformers.models.sam3_video.modeling_sam3_video import (
    Sam3VideoInferenceCache,
    Sam3VideoInferenceSession,
    Sam3VideoSegmentationOutput,
)
from transformers.utils import ModelOutput

from pipeline.core.errors import ProcessingError
from workers.atomic_files import write_atomically, write_bytes_atomically
from workers.model import LoadedModel
from workers.tracker import VideoTracker

FORMAT = "sam3v.tracker-state"
VERSION = 1
JSON_NAME = "tracker_state.json"
TENSORS_NAME = "tracker_state.safetensors"


class StateError(ProcessingError, ValueError):
    """A tracker state cannot be captured, written or read back; the message names the file."""


# --- what the codec knows -------------------------------------------------------------------------

# Every attribute of Sam3VideoInferenceSession in transformers 5.24, and how it is carried.
# "value": encoded as-is (tagged JSON, tensors in safetensors).
_CARRIED = "value"
_SESSION_ATTRIBUTES: dict[str, str] = {
    # Keys only: num_frames is len(processed_frames) (it sets the object-pointer window), but a
    # processed frame's pixels are never read again (VideoTracker sets them to None already).
    "processed_frames": "frame keys",
    "video_height": _CARRIED,
    "video_width": _CARRIED,
    # Devices are chosen by the process that restores (its model device, its state device).
    "inference_device": "restore-time device",
    "inference_state_device": "restore-time device",
    "video_storage_device": "restore-time device",
    "dtype": "dtype name",
    "max_vision_features_cache_size": _CARRIED,
    # Holds the vision features of the last processed frame only; the next frame computes and
    # caches its own before anything reads the cache, so a restored session starts it empty.
    "cache": "dropped",
    "_obj_id_to_idx": _CARRIED,
    "_obj_idx_to_id": _CARRIED,
    "obj_ids": _CARRIED,
    "mask_inputs_per_obj": _CARRIED,
    "point_inputs_per_obj": _CARRIED,
    "output_dict_per_obj": _CARRIED,
    "frames_tracked_per_obj": _CARRIED,
    "prompts": _CARRIED,
    "prompt_input_ids": _CARRIED,
    "prompt_embeddings": _CARRIED,  # cached text-encoder outputs (ModelOutput, allow-listed below)
    "prompt_attention_masks": _CARRIED,
    "obj_id_to_prompt_id": _CARRIED,
    "obj_id_to_score": _CARRIED,
    "obj_id_to_tracker_score_frame_wise": _CARRIED,
    "obj_id_to_last_occluded": _CARRIED,
    "max_obj_id": _CARRIED,
    "obj_first_frame_idx": _CARRIED,
    "unmatched_frame_inds": _CARRIED,
    "overlap_pair_to_frame_inds": _CARRIED,  # tuple keys
    "trk_keep_alive": _CARRIED,
    "removed_obj_ids": _CARRIED,
    "suppressed_obj_ids": _CARRIED,
    "hotstart_removed_obj_ids": _CARRIED,
    # Never read by Sam3VideoModel.forward (VideoTracker keeps its own buffer): must be empty.
    "output_buffer": "must be empty",
    # Set by Sam3VideoModel._tracker_add_new_objects, so absent until the first object appears.
    "obj_with_new_inputs": _CARRIED,
}
_OPTIONAL_SESSION_ATTRIBUTES = {"obj_with_new_inputs"}
_CACHE_ATTRIBUTES = {"inference_device", "inference_state_device", "max_vision_features_cache_size", "_vision_features"}

# VideoTracker's attributes: the model comes from the restoring process, the rest is carried.
_TRACKER_ATTRIBUTES = {"_loaded", "_model", "height", "width", "detection_threshold", "session", "buffer"}

# The only classes a state may instantiate (by name, never by import path).
_MODEL_OUTPUTS: dict[str, type[ModelOutput]] = {
    cls.__name__: cls for cls in (Sam3VideoSegmentationOutput, CLIPTextModelOutput, BaseModelOutputWithPooling)
}
_DICT_KINDS: dict[str, Callable[[], dict]] = {
    "dict": dict,
    "OrderedDict": OrderedDict,
    "defaultdict(list)": lambda: defaultdict(list),
    "defaultdict(set)": lambda: defaultdict(set),
    "defaultdict(dict)": lambda: defaultdict(dict),
}
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}

# Per-frame tracker outputs that store_output moves to the inference-state device; everything else
# (object pointers, score logits, memory features written later) lives on the inference device.
_STATE_DEVICE_KEYS = {"pred_masks", "high_res_masks"}


def _tensor_role(name: str) -> str:
    if name.startswith("session/output_dict_per_obj/") and name.rsplit("/", 1)[-1] in _STATE_DEVICE_KEYS:
        return "state"
    return "inference"


# --- encoding -----------------------------------------------------------------------------------

def _dict_kind(value: dict) -> str | None:
    if type(value) is dict:
        return "dict"
    if type(value) is OrderedDict:
        return "OrderedDict"
    if type(value) is defaultdict:
        factory = {list: "list", set: "set", dict: "dict"}.get(value.default_factory)
        return f"defaultdict({factory})" if factory else None
    return None


class _Encoder:
    """Python values -> JSON-able tagged values; tensors are copied out and named by their path.

    Grammar: null/bool/int/float/str as themselves, list as a JSON array, and JSON objects tagged by
    their first key: {"tensor"}, {"tuple"}, {"set"}, {"dict", "kind"}, {"model_output"}.
    """

    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def fail(self, path: str, what: str) -> StateError:
        return StateError(
            f"cannot capture the tracker: {path} holds {what}, which the state codec does not know "
            f"(transformers {transformers.__version__}); teach workers/state_codec.py about it"
        )

    def key(self, key: Any, path: str) -> Any:
        if key is None or type(key) in (bool, int, str):
            return key
        if type(key) is tuple and all(type(k) in (int, str) for k in key):
            return {"tuple": list(key)}
        raise self.fail(path, f"a dict key of type {type(key).__qualname__}")

    def value(self, value: Any, path: str) -> Any:
        kind = type(value)
        if value is None or kind in (bool, int, str):
            return value
        if kind is float:
            return value
        if isinstance(value, torch.Tensor):
            return self.tensor(value, path)
        if kind is list:
            return [self.value(v, f"{path}/{i}") for i, v in enumerate(value)]
        if kind is tuple:
            return {"tuple": [self.value(v, f"{path}/{i}") for i, v in enumerate(value)]}
        if kind in (set, frozenset):
            items = [self.key(v, path) for v in value]
            if not all(type(v) in (int, str) for v in items):
                raise self.fail(path, "a set of non-scalar values")
            return {"set": sorted(items, key=lambda v: (type(v).__name__, v))}
        if isinstance(value, ModelOutput):
            name = kind.__name__
            if _MODEL_OUTPUTS.get(name) is not kind:
                raise self.fail(path, f"a {kind.__module__}.{kind.__qualname__}")
            field_names = [f.name for f in dataclasses.fields(value)]
            extra = [k for k in vars(value) if k not in field_names]
            return {
                "model_output": name,
                "fields": [[k, self.value(getattr(value, k), f"{path}/{k}")] for k in field_names],
                "attrs": [[k, self.value(getattr(value, k), f"{path}/{k}")] for k in extra],
            }
        if isinstance(value, dict):
            dict_kind = _dict_kind(value)
            if dict_kind is None:
                raise self.fail(path, f"a {kind.__qualname__} (default_factory "
                                      f"{getattr(value, 'default_factory', None)!r})")
            pairs = []
            for k, v in value.items():
                label = ",".join(map(str, k)) if type(k) is tuple else str(k)
                pairs.append([self.key(k, path), self.value(v, f"{path}/{label}")])
            return {"dict": pairs, "kind": dict_kind}
        raise self.fail(path, f"a {kind.__module__}.{kind.__qualname__}")

    def tensor(self, tensor: torch.Tensor, name: str) -> dict:
        if name in self.tensors:
            raise self.fail(name, "two values that map to the same tensor name")
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise self.fail(name, f"a tensor of dtype {dtype}")
        # An owned, contiguous CPU copy: safetensors refuses views sharing storage (the memory
        # features of all objects are slices of one batched tensor), and the live session goes on.
        self.tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
        return {"tensor": name, "shape": list(tensor.shape), "dtype": dtype, "device": _tensor_role(name)}


# --- decoding -----------------------------------------------------------------------------------

class _Decoder:
    """Tagged JSON values -> Python values. Raises StateError for anything malformed."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str,
                 devices: dict[str, torch.device] | None = None) -> None:
        self.tensors = tensors
        self.source = source
        self.devices = devices
        self.used: set[str] = set()

    def fail(self, path: str, problem: str) -> StateError:
        return StateError(f"{self.source}: {path}: {problem}")

    def key(self, key: Any, path: str) -> Any:
        if key is None or type(key) in (bool, int, str):
            return key
        if isinstance(key, dict) and set(key) == {"tuple"} and isinstance(key["tuple"], list) \
                and all(type(k) in (int, str) for k in key["tuple"]):
            return tuple(key["tuple"])
        raise self.fail(path, f"malformed dict key {key!r}")

    def value(self, value: Any, path: str) -> Any:
        if value is None or type(value) in (bool, int, float, str):
            return value
        if isinstance(value, list):
            return [self.value(v, f"{path}/{i}") for i, v in enumerate(value)]
        if not isinstance(value, dict) or not value:
            raise self.fail(path, f"malformed value {value!r:.80}")
        tag = next(iter(value))
        if tag == "tensor":
            return self.tensor(value, path)
        if tag == "tuple" and isinstance(value["tuple"], list):
            return tuple(self.value(v, f"{path}/{i}") for i, v in enumerate(value["tuple"]))
        if tag == "set" and isinstance(value["set"], list):
            return {self.key(v, path) for v in value["set"]}
        if tag == "dict" and isinstance(value["dict"], list) and value.get("kind") in _DICT_KINDS:
            out = _DICT_KINDS[value["kind"]]()
            for pair in value["dict"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise self.fail(path, f"malformed dict entry {pair!r:.80}")
                k = self.key(pair[0], path)
                label = ",".join(map(str, k)) if type(k) is tuple else str(k)
                out[k] = self.value(pair[1], f"{path}/{label}")
            return out
        if tag == "model_output" and value["model_output"] in _MODEL_OUTPUTS:
            cls = _MODEL_OUTPUTS[value["model_output"]]
            try:
                field_pairs = {k: self.value(v, f"{path}/{k}") for k, v in value["fields"]}
                attr_pairs = [(k, self.value(v, f"{path}/{k}")) for k, v in value["attrs"]]
            except (KeyError, TypeError, ValueError) as err:
                if isinstance(err, StateError):
                    raise
                raise self.fail(path, f"malformed {cls.__name__} ({err})") from err
            names = {f.name for f in dataclasses.fields(cls)}
            if set(field_pairs) != names or any(not isinstance(k, str) or k in names for k, _ in attr_pairs):
                raise self.fail(path, f"{cls.__name__} fields {sorted(field_pairs)} do not match {sorted(names)}")
            obj = cls(**field_pairs)
            for k, v in attr_pairs:
                setattr(obj, k, v)
            return obj
        raise self.fail(path, f"malformed value {value!r:.80}")

    def tensor(self, spec: dict, path: str) -> torch.Tensor:
        name = spec.get("tensor")
        if not isinstance(name, str) or name not in self.tensors:
            raise self.fail(path, f"tensor {name!r} is missing from the safetensors file")
        tensor = self.tensors[name]
        if spec.get("dtype") not in _DTYPES:
            raise self.fail(path, f"tensor {name!r} has unknown dtype {spec.get('dtype')!r}")
        if list(tensor.shape) != spec.get("shape") or tensor.dtype != _DTYPES[spec["dtype"]]:
            raise self.fail(
                path,
                f"tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')}{list(tensor.shape)} in the "
                f"safetensors file, the document records {spec.get('dtype')}{spec.get('shape')}",
            )
        if spec.get("device") not in ("inference", "state"):
            raise self.fail(path, f"tensor {name!r} has unknown device role {spec.get('device')!r}")
        self.used.add(name)
        if self.devices is None:
            return tensor
        return tensor.to(self.devices[spec["device"]])


# --- session and tracker layout -------------------------------------------------------------------

def _check_layout(tracker: VideoTracker, session: Sam3VideoInferenceSession) -> None:
    unknown = sorted(set(vars(tracker)) - _TRACKER_ATTRIBUTES)
    if unknown:
        raise StateError(
            f"cannot capture the tracker: VideoTracker has attribute(s) {unknown} that the state codec "
            f"does not carry; add them to workers/state_codec.py"
        )
    if type(session) is not Sam3VideoInferenceSession:
        raise StateError(f"cannot capture the tracker: its session is a {type(session).__qualname__}")
    present = set(vars(session))
    unknown = sorted(present - set(_SESSION_ATTRIBUTES))
    missing = sorted(set(_SESSION_ATTRIBUTES) - _OPTIONAL_SESSION_ATTRIBUTES - present)
    if unknown or missing:
        raise StateError(
            "session layout the pinned transformers version does not have: Sam3VideoInferenceSession "
            f"(transformers {transformers.__version__}) has unknown attribute(s) {unknown} and lacks "
            f"{missing}; workers/state_codec.py was written for transformers 5.24: review what the "
            "new state holds before upgrading"
        )
    cache = session.cache
    if type(cache) is not Sam3VideoInferenceCache or set(vars(cache)) != _CACHE_ATTRIBUTES:
        raise StateError(
            "session layout the pinned transformers version does not have: the session cache "
            f"({type(cache).__qualname__}) has attributes {sorted(vars(cache))}, expected {sorted(_CACHE_ATTRIBUTES)}"
        )


def _frame_ranges(keys) -> list[list[int]]:
    """Frame keys in insertion order as half-open runs [start, stop)."""
    runs: list[list[int]] = []
    for k in keys:
        if type(k) is not int:
            raise StateError(f"cannot capture the tracker: processed_frames has a key of type {type(k).__qualname__}")
        if runs and runs[-1][1] == k:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    return runs


# --- the state ----------------------------------------------------------------------------------

class TrackerState:
    """A VideoTracker between two frames: a JSON document plus named CPU tensors."""

    def __init__(self, document: dict, tensors: dict[str, torch.Tensor], source: str = "tracker state"):
        self.document = document
        self.tensors = tensors
        self.source = source  # names the files in error messages

    # capture ---------------------------------------------------------------------------------------

    @classmethod
    @torch.no_grad()
    def capture(cls, tracker: VideoTracker) -> TrackerState:
        """Snapshot a tracker (between two pushes); the tracker itself is left untouched."""
        session = tracker.session
        _check_layout(tracker, session)
        if session.output_buffer:
            raise StateError("cannot capture the tracker: session.output_buffer is not empty, and "
                             "Sam3VideoModel.forward never fills it; the codec does not carry it")
        enc = _Encoder()
        values = {}
        for name, how in _SESSION_ATTRIBUTES.items():
            if how == _CARRIED and hasattr(session, name):
                values[name] = enc.value(getattr(session, name), f"session/{name}")
        frames = session.processed_frames
        dtype = str(session.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise enc.fail("session/dtype", f"dtype {session.dtype!r}")
        loaded: LoadedModel = tracker._loaded
        document = {
            "format": FORMAT,
            "version": VERSION,
            "transformers_version": transformers.__version__,
            "torch_version": torch.__version__,
            "model": {"source": str(loaded.source), "revision": loaded.revision},
            "tensors": None,  # filled in when the tensors are serialised (size, sha256)
            "tracker": {
                "height": int(tracker.height),
                "width": int(tracker.width),
                # Optional in the document: absent (a state from before the option) means None.
                "detection_threshold": tracker.detection_threshold,
                "buffer": enc.value(list(tracker.buffer), "tracker/buffer"),
            },
            "session": {
                "processed_frames": None if frames is None else _frame_ranges(frames.keys()),
                "dtype": dtype,
                "captured_devices": {
                    "inference": str(session.inference_device),
                    "state": str(session.inference_state_device),
                    "video": str(session.video_storage_device),
                },
                "values": values,
            },
        }
        return cls(document, enc.tensors)

    @property
    def last_frame_idx(self) -> int | None:
        """The last frame pushed before the capture (the restored tracker continues after it)."""
        runs = self.document["session"]["processed_frames"]
        return max(stop - 1 for _, stop in runs) if runs else None

    @property
    def tensor_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    # serialisation -------------------------------------------------------------------------------

    def _document_bytes(self, tensors_size: int, tensors_sha256: str) -> bytes:
        doc = dict(self.document)
        doc["tensors"] = {"file": TENSORS_NAME, "bytes": tensors_size, "sha256": tensors_sha256,
                          "count": len(self.tensors)}
        return json.dumps(doc, separators=(",", ":")).encode()

    def to_bytes(self) -> tuple[bytes, bytes]:
        """(JSON document, safetensors file) for a storage backend that stores bytes."""
        data = safetensors.torch.save(self.tensors, metadata={"format": FORMAT})
        return self._document_bytes(len(data), hashlib.sha256(data).hexdigest()), data

    def to_files(self, directory: str | Path) -> tuple[Path, Path]:
        """Write the two files atomically, tensors first: the JSON document is the commit point."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors_path = directory / TENSORS_NAME
        json_path = directory / JSON_NAME

        def write_tensors(tmp: Path) -> tuple[int, str]:
            safetensors.torch.save_file(self.tensors, str(tmp), metadata={"format": FORMAT})
            return _file_digest(tmp)

        size, digest = write_atomically(tensors_path, write_tensors)
        write_bytes_atomically(json_path, self._document_bytes(size, digest))
        return json_path, tensors_path

    @classmethod
    def from_files(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> TrackerState:
        """Read and fully validate a state; tensors are loaded onto ``map_location``."""
        directory = Path(directory)
        json_path = directory / JSON_NAME
        tensors_path = directory / TENSORS_NAME
        document = _parse_document(_read(json_path), str(json_path))
        size, digest = _file_digest_or_fail(tensors_path)
        _check_tensor_file(document, size, digest, str(tensors_path), str(json_path))
        try:
            tensors = safetensors.torch.load_file(str(tensors_path), device=str(map_location))
        except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise StateError(f"{tensors_path}: not a readable safetensors file ({err})") from err
        state = cls(document, tensors, f"{json_path} + {tensors_path.name}")
        state._validate()
        return state

    @classmethod
    def from_bytes(cls, document: bytes, tensors: bytes, map_location: str | torch.device = "cpu",
                   source: str = "tracker state") -> TrackerState:
        doc = _parse_document(document, f"{source} ({JSON_NAME})")
        _check_tensor_file(doc, len(tensors), hashlib.sha256(tensors).hexdigest(),
                           f"{source} ({TENSORS_NAME})", f"{source} ({JSON_NAME})")
        try:
            loaded = safetensors.torch.load(tensors)
        except (safetensors.SafetensorError, OSError, ValueError, RuntimeError) as err:
            raise StateError(f"{source} ({TENSORS_NAME}): not readable safetensors data ({err})") from err
        state = cls(doc, {k: v.to(map_location) for k, v in loaded.items()}, source)
        state._validate()
        return state

    def _decode(self, source: str, devices: dict[str, torch.device] | None):
        """Decode every value (validating every tensor reference); returns (session values, buffer)."""
        dec = _Decoder(self.tensors, source, devices)
        try:
            session = self.document["session"]
            values = session["values"]
            if not isinstance(values, dict):
                raise TypeError("session values are not an object")
            unknown = sorted(set(values) - {k for k, how in _SESSION_ATTRIBUTES.items() if how == _CARRIED})
            missing = sorted({k for k, how in _SESSION_ATTRIBUTES.items() if how == _CARRIED}
                             - _OPTIONAL_SESSION_ATTRIBUTES - set(values))
            if unknown or missing:
                raise dec.fail("session", f"unknown attribute(s) {unknown}, missing {missing}")
            decoded = {name: dec.value(v, f"session/{name}") for name, v in values.items()}
            buffer = dec.value(self.document["tracker"]["buffer"], "tracker/buffer")
            if not isinstance(buffer, list) or not all(isinstance(o, Sam3VideoSegmentationOutput) for o in buffer):
                raise dec.fail("tracker/buffer", "not a list of Sam3VideoSegmentationOutput")
            runs = session["processed_frames"]
            if runs is not None and not (isinstance(runs, list) and all(
                    isinstance(r, list) and len(r) == 2 and all(type(x) is int for x in r) and r[0] < r[1]
                    for r in runs)):
                raise dec.fail("session/processed_frames", f"malformed frame runs {runs!r:.80}")
            if session["dtype"] not in _DTYPES:
                raise dec.fail("session/dtype", f"unknown dtype {session['dtype']!r}")
            for key in ("height", "width"):
                if type(self.document["tracker"][key]) is not int:
                    raise dec.fail(f"tracker/{key}", "not an integer")
            threshold = self.document["tracker"].get("detection_threshold")
            if threshold is not None and (type(threshold) not in (int, float) or not 0.0 <= threshold <= 1.0):
                raise dec.fail("tracker/detection_threshold", f"{threshold!r} is not a number in [0, 1]")
        except StateError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise StateError(f"{source}: malformed state document ({type(err).__name__}: {err})") from err
        extra = sorted(set(self.tensors) - dec.used)
        if extra:
            raise StateError(f"{source}: the safetensors file holds tensors the document does not "
                             f"reference: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        return decoded, buffer

    def _validate(self) -> None:
        self._decode(self.source, devices=None)

    # restore -------------------------------------------------------------------------------------

    def restore(self, loaded: LoadedModel, state_device: str | torch.device | None = None) -> VideoTracker:
        """A new VideoTracker that continues exactly where the captured one stopped."""
        source = self.source
        recorded = self.document.get("model", {})
        if recorded.get("revision") != loaded.revision:
            raise StateError(
                f"{source}: written with model {recorded.get('source')!r} (revision {recorded.get('revision')}), "
                f"restoring with {loaded.source!r} (revision {loaded.revision}): a state only continues "
                "on the model that wrote it"
            )
        tracker_doc = self.document["tracker"]
        tracker = VideoTracker(loaded, [], tracker_doc["height"], tracker_doc["width"], state_device=state_device,
                               detection_threshold=tracker_doc.get("detection_threshold"))
        session = tracker.session
        _check_layout(tracker, session)
        devices = {"inference": torch.device(session.inference_device),
                   "state": torch.device(session.inference_state_device)}
        values, buffer = self._decode(source, devices)
        for name, value in values.items():
            setattr(session, name, value)
        runs = self.document["session"]["processed_frames"]
        session.processed_frames = None if runs is None else {
            k: None for start, stop in runs for k in range(start, stop)
        }
        session.dtype = _DTYPES[self.document["session"]["dtype"]]
        session.cache.max_vision_features_cache_size = session.max_vision_features_cache_size
        tracker.buffer = buffer
        return tracker


# --- convenience --------------------------------------------------------------------------------

def save_state(tracker: VideoTracker, directory: str | Path) -> TrackerState:
    state = TrackerState.capture(tracker)
    state.to_files(directory)
    return state


def load_state(directory: str | Path, loaded: LoadedModel, state_device: str | torch.device | None = None,
               map_location: str | torch.device | None = None) -> VideoTracker:
    state = TrackerState.from_files(directory, map_location or loaded.device)
    return state.restore(loaded, state_device=state_device)


# --- reading the files --------------------------------------------------------------------------

def _file_digest(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _file_digest_or_fail(path: Path) -> tuple[int, str]:
    try:
        return _file_digest(path)
    except FileNotFoundError:
        raise StateError(f"{path}: missing (a tracker state is {JSON_NAME} + {TENSORS_NAME})") from None
    except OSError as err:
        raise StateError(f"{path}: cannot be read ({err})") from err


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"{path}: missing (a tracker state is {JSON_NAME} + {TENSORS_NAME})") from None
    except OSError as err:
        raise StateError(f"{path}: cannot be read ({err})") from err


def _parse_document(data: bytes, source: str) -> dict:
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as err:
        raise StateError(f"{source}: not valid JSON ({err})") from err
    if not isinstance(document, dict):
        raise StateError(f"{source}: not a tracker state (a JSON {type(document).__name__}, not an object)")
    if document.get("format") != FORMAT:
        raise StateError(f"{source}: not a tracker state (format {document.get('format')!r}, expected {FORMAT!r})")
    if document.get("version") != VERSION:
        raise StateError(f"{source}: tracker state version {document.get('version')!r}, this build reads "
                         f"version {VERSION}")
    if document.get("transformers_version") != transformers.__version__:
        raise StateError(
            f"{source}: written with transformers {document.get('transformers_version')!r}, this process runs "
            f"{transformers.__version__}: a tracker state only continues on the transformers version that wrote it"
        )
    for key in ("model", "tensors", "tracker", "session"):
        if not isinstance(document.get(key), dict):
            raise StateError(f"{source}: malformed tracker state (missing or invalid {key!r})")
    return document


def _check_tensor_file(document: dict, size: int, digest: str, tensors_source: str, json_source: str) -> None:
    info = document["tensors"]
    if info.get("bytes") != size:
        raise StateError(f"{tensors_source}: {size} bytes, but {json_source} records {info.get('bytes')}: "
                         "truncated, or not the file saved with this document")
    if info.get("sha256") != digest:
        raise StateError(f"{tensors_source}: sha256 {digest[:12]}... differs from the "
                         f"{str(info.get('sha256'))[:12]}... recorded in {json_source}: damaged, or the two "
                         "files come from different saves")
