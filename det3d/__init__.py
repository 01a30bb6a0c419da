"""det3d: Detectron2-style 3D instance detection and segmentation for microscopy volumes."""

__version__ = "0.1.0"

# Register the compiled ops (torch.ops.det3d.nms, .roi_align, ...) and their fake, autograd and
# autocast kernels (det3d/layers/op_registrations.py) as soon as det3d is imported.
# A source checkout without the build still imports, so configs and data tools work; the op
# wrappers in det3d.layers then say how to build det3d._C.
try:
    from .layers import op_registrations  # noqa: F401  (imports det3d._C)
except ImportError:  # pragma: no cover - only in an unbuilt checkout
    pass

# `import det3d` registers everything, here and nowhere else: the model parts (meta-architectures,
# backbones, heads, ...) in the registries, the builtin datasets in the catalogs, the evaluators;
# where detectron2 is importable these are Detectron2's registries and catalogs, and the bridge
# then makes Detectron2's build_optimizer honour det3d's SOLVER.OPTIMIZER.
from . import modeling  # noqa: E402,F401  isort: skip
from . import data  # noqa: E402,F401  isort: skip
from . import evaluation  # noqa: E402,F401  isort: skip
from .bridge import detectron2 as _detectron2_bridge  # noqa: E402  isort: skip

_detectron2_bridge.install()
