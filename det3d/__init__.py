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
