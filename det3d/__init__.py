"""det3d: Detectron2-style 3D instance detection and segmentation for microscopy volumes."""

__version__ = "0.1.0"
