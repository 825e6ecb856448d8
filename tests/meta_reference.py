"""Meta's reference post-processing (the `sam3` package's perflib), importable without the rest of sam3.

`import sam3.perflib.nms` would first run `sam3/__init__.py`, which builds the whole SAM 3 model
stack (timm, torchvision, iopath, ...): the Makefile installs `sam3` with --no-deps because those
would replace our torch and numpy. The perflib modules themselves need only torch, numpy and (CPU
connected components) scikit-image, so the `sam3` package is registered here by its location alone,
without running its `__init__`, and the two modules are imported from it as they are.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types

import torch


def _register_sam3_package() -> None:
    if "sam3" in sys.modules:
        return
    spec = importlib.util.find_spec("sam3")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the sam3 package (Meta's SAM 3, test-only) is not installed: run `make setup`, "
                          "or `pip install --no-deps sam3==0.1.4` plus scikit-image")
    package = types.ModuleType("sam3")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["sam3"] = package


_register_sam3_package()
nms = importlib.import_module("sam3.perflib.nms")
connected_components = importlib.import_module("sam3.perflib.connected_components")


class MetaCvUtils:
    """Meta's reference behind the kernel interface transformers calls (``generic_nms``, ``cc_2d``),
    so that transformers' own functions can run with it in place of ours."""

    name = "Meta sam3.perflib"

    def generic_nms(self, ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                    use_iou_matrix: bool = True) -> torch.Tensor:
        return nms.generic_nms(ious, scores, iou_threshold)

    def cc_2d(self, mask: torch.Tensor, get_counts: bool = True):
        return connected_components.connected_components(mask)
