"""Tagged JSON plus named tensors: the state codec's encoding, stable across transformers versions.

Grammar: null/bool/int/float/str as themselves, list as a JSON array, and JSON objects tagged by
their first key: {"tensor"}, {"tuple"}, {"set"}, {"dict", "kind"}, {"model_output"}. Tensors are
copied out to CPU and named by their path; the caller stores them (safetensors). Only allow-listed
dict kinds, dtypes and model-output classes (named by the caller, never imported by path) are ever
built back: nothing here unpickles or imports anything a document names.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from typing import Any

import torch
import transformers
from transformers.utils import ModelOutput

from pipeline.core.errors import ProcessingError


class StateError(ProcessingError, ValueError):
    """A tracker state cannot be captured, written or read back; the message names the file."""


DICT_KINDS: dict[str, Callable[[], dict]] = {
    "dict": dict,
    "OrderedDict": OrderedDict,
    "defaultdict(list)": lambda: defaultdict(list),
    "defaultdict(set)": lambda: defaultdict(set),
    "defaultdict(dict)": lambda: defaultdict(dict),
}
DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
              torch.int16, torch.int8, torch.uint8, torch.bool)
}


def dict_kind(value: dict) -> str | None:
    if type(value) is dict:
        return "dict"
    if type(value) is OrderedDict:
        return "OrderedDict"
    if type(value) is defaultdict:
        factory = {list: "list", set: "set", dict: "dict"}.get(value.default_factory)
        return f"defaultdict({factory})" if factory else None
    return None


class Encoder:
    """Python values -> JSON-able tagged values; tensors are copied out and named by their path.

    Grammar: null/bool/int/float/str as themselves, list as a JSON array, and JSON objects tagged by
    their first key: {"tensor"}, {"tuple"}, {"set"}, {"dict", "kind"}, {"model_output"}.
    """

    def __init__(self, model_outputs: dict[str, type[ModelOutput]], tensor_role: Callable[[str], str]) -> None:
        self.tensors: dict[str, torch.Tensor] = {}
        self.model_outputs = model_outputs  # the only ModelOutput classes a value may be
        self.tensor_role = tensor_role  # a tensor's name -> the device it is restored to ("inference", "state")

    def fail(self, path: str, what: str) -> StateError:
        return StateError(
            f"cannot capture the tracker: {path} holds {what}, which the state codec does not know "
            f"(transformers {transformers.__version__}); teach workers/model/state_codec.py about it"
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
            if self.model_outputs.get(name) is not kind:
                raise self.fail(path, f"a {kind.__module__}.{kind.__qualname__}")
            field_names = [f.name for f in dataclasses.fields(value)]
            extra = [k for k in vars(value) if k not in field_names]
            return {
                "model_output": name,
                "fields": [[k, self.value(getattr(value, k), f"{path}/{k}")] for k in field_names],
                "attrs": [[k, self.value(getattr(value, k), f"{path}/{k}")] for k in extra],
            }
        if isinstance(value, dict):
            kind_name = dict_kind(value)
            if kind_name is None:
                raise self.fail(path, f"a {kind.__qualname__} (default_factory "
                                      f"{getattr(value, 'default_factory', None)!r})")
            pairs = []
            for k, v in value.items():
                label = ",".join(map(str, k)) if type(k) is tuple else str(k)
                pairs.append([self.key(k, path), self.value(v, f"{path}/{label}")])
            return {"dict": pairs, "kind": kind_name}
        raise self.fail(path, f"a {kind.__module__}.{kind.__qualname__}")

    def tensor(self, tensor: torch.Tensor, name: str) -> dict:
        if name in self.tensors:
            raise self.fail(name, "two values that map to the same tensor name")
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPES:
            raise self.fail(name, f"a tensor of dtype {dtype}")
        # An owned, contiguous CPU copy: safetensors refuses views sharing storage (the memory
        # features of all objects are slices of one batched tensor), and the live session goes on.
        self.tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()
        return {"tensor": name, "shape": list(tensor.shape), "dtype": dtype, "device": self.tensor_role(name)}


# --- decoding -----------------------------------------------------------------------------------

class Decoder:
    """Tagged JSON values -> Python values. Raises StateError for anything malformed."""

    def __init__(self, tensors: dict[str, torch.Tensor], source: str, model_outputs: dict[str, type[ModelOutput]],
                 devices: dict[str, torch.device] | None = None) -> None:
        self.tensors = tensors
        self.model_outputs = model_outputs
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
        if tag == "dict" and isinstance(value["dict"], list) and value.get("kind") in DICT_KINDS:
            out = DICT_KINDS[value["kind"]]()
            for pair in value["dict"]:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise self.fail(path, f"malformed dict entry {pair!r:.80}")
                k = self.key(pair[0], path)
                label = ",".join(map(str, k)) if type(k) is tuple else str(k)
                out[k] = self.value(pair[1], f"{path}/{label}")
            return out
        if tag == "model_output" and value["model_output"] in self.model_outputs:
            cls = self.model_outputs[value["model_output"]]
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
        if spec.get("dtype") not in DTYPES:
            raise self.fail(path, f"tensor {name!r} has unknown dtype {spec.get('dtype')!r}")
        if list(tensor.shape) != spec.get("shape") or tensor.dtype != DTYPES[spec["dtype"]]:
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
