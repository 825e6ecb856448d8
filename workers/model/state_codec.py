"""Tracker state codec: save a VideoTracker between two frames, continue it elsewhere exactly; never pickle.

A video is segmented as chunks, possibly on different machines: the worker that ends chunk k saves
its tracker, the worker for chunk k+1 restores it and pushes the next frame. Continuing a restored
tracker gives bit-identical masks to one continuous run.

Two files, written atomically (``workers.media.atomic_files``), the JSON last:

- ``tracker_state.safetensors``: every tensor (memory features, object pointers, masks, ...).
- ``tracker_state.json``: everything else as a versioned document (``format``, ``version``,
  ``transformers_version``), which names each tensor with its shape and dtype and records the size
  and sha256 of the safetensors file, so a state whose two halves come from different saves, a
  truncated file or an edited document is refused with a :class:`StateError` naming the file.

Nothing is unpickled and nothing is ``torch.load``-ed: reading a state from a bucket cannot run code.

The session (``Sam3VideoInferenceSession``, transformers 5.24) is captured attribute by attribute:
which attributes and how is ``workers.model.session_schema`` (the half that changes with a
transformers upgrade); the encoding is ``workers.model.tagged_codec`` (the half that does not).

Dropping the history the tracker never reads again, which keeps a state small, is
``workers.model.state_pruning``'s job.

API::

    state = TrackerState.capture(tracker)        # snapshot (tensors copied to CPU)
    state.to_files(directory)                     # or save_state(tracker, directory)
    state = TrackerState.from_files(directory)    # validates everything, raises StateError
    tracker = state.restore(loaded)               # or load_state(directory, loaded)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import transformers
from transformers.models.sam3_video.modeling_sam3_video import (
    Sam3VideoSegmentationOutput,
)

from workers.media.atomic_files import write_atomically, write_bytes_atomically
from workers.media.frame_objects import FrameObjects
from workers.model.loading import LoadedModel
from workers.model.session_schema import (
    CARRIED,
    MODEL_OUTPUTS,
    OPTIONAL_SESSION_ATTRIBUTES,
    SESSION_ATTRIBUTES,
    check_layout,
    frame_ranges,
    tensor_role,
)
from workers.model.tagged_codec import DTYPES, Decoder, Encoder, StateError
from workers.model.tracker import VideoTracker
from workers.model.visual_objects import VisualObject
from workers.model.visual_tracker import VisualSession

__all__ = ["JSON_NAME", "TENSORS_NAME", "StateError", "TrackerState", "load_backward", "load_state", "save_backward",
           "save_state"]

FORMAT = "sam3v.tracker-state"
VERSION = 1
JSON_NAME = "tracker_state.json"
TENSORS_NAME = "tracker_state.safetensors"


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
        check_layout(tracker, session)
        if session.output_buffer:
            raise StateError("cannot capture the tracker: session.output_buffer is not empty, and "
                             "Sam3VideoModel.forward never fills it; the codec does not carry it")
        enc = Encoder(MODEL_OUTPUTS, tensor_role)
        values = {}
        for name, how in SESSION_ATTRIBUTES.items():
            if how == CARRIED and hasattr(session, name):
                values[name] = enc.value(getattr(session, name), f"session/{name}")
        frames = session.processed_frames
        dtype = str(session.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
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
                "processed_frames": None if frames is None else frame_ranges(frames.keys()),
                "dtype": dtype,
                "captured_devices": {
                    "inference": str(session.inference_device),
                    "state": str(session.inference_state_device),
                    "video": str(session.video_storage_device),
                },
                "values": values,
            },
        }
        if tracker.visual is not None or tracker.backward:
            document["visual"] = _capture_visual(tracker, enc)
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
        dec = Decoder(self.tensors, source, MODEL_OUTPUTS, devices)
        try:
            session = self.document["session"]
            values = session["values"]
            if not isinstance(values, dict):
                raise TypeError("session values are not an object")
            unknown = sorted(set(values) - {k for k, how in SESSION_ATTRIBUTES.items() if how == CARRIED})
            missing = sorted({k for k, how in SESSION_ATTRIBUTES.items() if how == CARRIED}
                             - OPTIONAL_SESSION_ATTRIBUTES - set(values))
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
            if session["dtype"] not in DTYPES:
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
        visual = _decode_visual(self.document.get("visual"), dec, source)
        extra = sorted(set(self.tensors) - dec.used)
        if extra:
            raise StateError(f"{source}: the safetensors file holds tensors the document does not "
                             f"reference: {extra[:5]}{' ...' if len(extra) > 5 else ''}")
        return decoded, buffer, visual

    def _validate(self) -> None:
        self._decode(self.source, devices=None)

    # restore -------------------------------------------------------------------------------------

    def restore(self, loaded: LoadedModel, state_device: str | torch.device | None = None,
                visual: list[VisualObject] | None = None) -> VideoTracker:
        """A new VideoTracker that continues exactly where the captured one stopped. ``visual``: the
        video's visual objects (inputs, not state), when the state tracks some."""
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
        check_layout(tracker, session)
        devices = {"inference": torch.device(session.inference_device),
                   "state": torch.device(session.inference_state_device)}
        values, buffer, visual_state = self._decode(source, devices)
        for name, value in values.items():
            setattr(session, name, value)
        runs = self.document["session"]["processed_frames"]
        session.processed_frames = None if runs is None else {
            k: None for start, stop in runs for k in range(start, stop)
        }
        session.dtype = DTYPES[self.document["session"]["dtype"]]
        session.cache.max_vision_features_cache_size = session.max_vision_features_cache_size
        tracker.buffer = buffer
        if visual_state is not None:
            _restore_visual(tracker, visual_state, visual, loaded, state_device, source)
        elif visual:
            raise StateError(f"{source}: the video has visual objects but the state tracks none: it was written "
                             "for another request")
        return tracker


# --- convenience --------------------------------------------------------------------------------

def save_state(tracker: VideoTracker, directory: str | Path) -> TrackerState:
    state = TrackerState.capture(tracker)
    state.to_files(directory)
    return state


def load_state(directory: str | Path, loaded: LoadedModel, state_device: str | torch.device | None = None,
               map_location: str | torch.device | None = None,
               visual: list[VisualObject] | None = None) -> VideoTracker:
    state = TrackerState.from_files(directory, map_location or loaded.device)
    return state.restore(loaded, state_device=state_device, visual=visual)


def save_backward(session: VisualSession, directory: str | Path) -> TrackerState:
    """A backward pass's session (``workers.chunks.backward_pass``), for the backward chunk before.
    It travels as the visual session of a tracker with no text prompts: one file format for both."""
    carrier = VideoTracker(session._loaded, [], session.height, session.width)
    carrier.visual = session
    return save_state(carrier, directory)


def load_backward(directory: str | Path, loaded: LoadedModel, objects: list[VisualObject]) -> VisualSession:
    """``save_backward``'s session again; ``objects``: the ones the backward pass tracks (inputs)."""
    state = TrackerState.from_files(directory, loaded.device)
    visual = state.document.get("visual") or {}
    if not (visual.get("session") or {}).get("reverse"):
        raise StateError(f"{state.source}: not a backward pass's state")
    return state.restore(loaded, visual=objects).visual


# --- visual objects (#22) -----------------------------------------------------------------------
# The forward visual session is the same class as the text session (Sam3VideoInferenceSession) and
# is carried the same way, attribute by attribute; the frames' visual masks still waiting for their
# hotstart window (``_visual_found``) and the backward pass's masks of frames not yet written
# (``backward``) travel as bool tensors with their ids and scores. The objects themselves (their
# prompts and descriptions) are inputs: the chunk runner gives them again.

def _found_value(found: FrameObjects) -> dict:
    return {"ids": [int(i) for i in found.object_ids], "scores": [float(v) for v in found.scores],
            "masks": torch.from_numpy(found.masks)}


def _capture_visual(tracker: VideoTracker, enc: Encoder) -> dict:
    doc: dict = {"session": None,
                 "found": enc.value({t: _found_value(f) for t, f in tracker._visual_found.items()}, "visual/found"),
                 "backward": enc.value({t: _found_value(f) for t, f in tracker.backward.items()}, "visual/backward")}
    if tracker.visual is not None:
        vs = tracker.visual.session
        doc["session"] = {
            "values": {name: enc.value(getattr(vs, name), f"visual/session/{name}")
                       for name, how in SESSION_ATTRIBUTES.items() if how == CARRIED and hasattr(vs, name)},
            "processed_frames": frame_ranges(vs.processed_frames.keys()),
            "last": tracker.visual.last,
            "reverse": tracker.visual.reverse,  # a backward pass's session (absent before: forwards)
        }
    return doc


def _decode_visual(doc: dict | None, dec: Decoder, source: str) -> dict | None:
    if doc is None:
        return None
    try:
        out = {"found": dec.value(doc["found"], "visual/found"), "backward": dec.value(doc["backward"], "visual/backward"),
               "session": None}
        for key in ("found", "backward"):
            for t, f in out[key].items():
                if type(t) is not int or set(f) != {"ids", "scores", "masks"} or len(f["ids"]) != len(f["masks"]):
                    raise dec.fail(f"visual/{key}/{t}", "not a frame's visual objects")
        session = doc["session"]
        if session is not None:
            values = {name: dec.value(v, f"visual/session/{name}") for name, v in session["values"].items()}
            unknown = sorted(set(values) - {k for k, how in SESSION_ATTRIBUTES.items() if how == CARRIED})
            if unknown:
                raise dec.fail("visual/session", f"unknown attribute(s) {unknown}")
            last = session["last"]
            if last is not None and type(last) is not int:
                raise dec.fail("visual/session/last", "not a frame number")
            reverse = session.get("reverse", False)
            if type(reverse) is not bool:
                raise dec.fail("visual/session/reverse", "not true or false")
            out["session"] = {"values": values, "runs": session["processed_frames"], "last": last, "reverse": reverse}
        return out
    except StateError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise StateError(f"{source}: malformed visual state ({type(err).__name__}: {err})") from err


def _restore_visual(tracker: VideoTracker, state: dict, objects: list[VisualObject] | None, loaded: LoadedModel,
                    state_device, source: str) -> None:
    if not objects:
        raise StateError(f"{source}: the state tracks visual objects but the video has none: it was written for "
                         "another request")
    described = {o.obj_id: o.description for o in objects}

    def frames(by_frame: dict) -> dict[int, FrameObjects]:
        out = {}
        for t, f in by_frame.items():
            if not set(f["ids"]) <= set(described):
                raise StateError(f"{source}: the state's visual objects {f['ids']} are not the video's {sorted(described)}")
            out[t] = FrameObjects(t, list(f["ids"]), list(f["scores"]), [described[i] for i in f["ids"]],
                                  f["masks"].cpu().numpy())
        return out

    tracker._visual_found = frames(state["found"])
    tracker.backward = frames(state["backward"])
    if state["session"] is not None:
        visual = VisualSession(loaded, objects, tracker.height, tracker.width, reverse=state["session"]["reverse"],
                               state_device=state_device)
        for name, value in state["session"]["values"].items():
            setattr(visual.session, name, value)
        visual.session.processed_frames = {k: None for start, stop in state["session"]["runs"]
                                           for k in range(start, stop)}
        visual.last = state["session"]["last"]
        tracker.visual = visual


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
