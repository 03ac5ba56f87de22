"""Makes torchvision, timm and transformers' PyTorch models importable next to the CPU build of torch.

PyPI only ships CUDA builds of torchvision (pulled in by timm). Against `torch==2.13.0+cpu` its C extension
cannot load, and torchvision's import then fails while registering fake kernels for two ops the extension
would have defined (`torchvision::nms`, `torchvision::qnms`). transformers imports torchvision whenever it
is installed, so its PyTorch models break too. Defining those two schemas first lets the pure-Python parts
(transforms, `ops.misc`, timm models, transformers models) load unchanged; the detection ops themselves stay
unavailable, and nothing here uses them. Call `prepare_torch_imports()` before importing transformers
models, timm or torchvision. The JAX code never imports torch.
"""

import glob
import importlib
import importlib.util
import os
import types

_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)
_library = None


def prepare_torch_imports() -> None:
    """Defines the missing torchvision op schemas when torchvision is installed but its extension cannot load."""
    global _library
    if _library is not None or importlib.util.find_spec("torch") is None:
        return
    spec = importlib.util.find_spec("torchvision")
    if spec is None or _extension_loads(spec):
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def import_torchvision() -> types.ModuleType:
    prepare_torch_imports()
    return importlib.import_module("torchvision")


def import_timm() -> types.ModuleType:
    prepare_torch_imports()
    return importlib.import_module("timm")


def _extension_loads(spec) -> bool:
    import torch

    for path in glob.glob(os.path.join(spec.submodule_search_locations[0], "_C*.so")):
        try:
            torch.ops.load_library(path)
            return True
        except OSError:
            return False
    return False
