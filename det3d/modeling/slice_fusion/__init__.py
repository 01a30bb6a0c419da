"""2.5D slice fusion: the modules of ``SLICE_FUSION_REGISTRY`` and their protocol."""

from .base import (
    FUSION_INITS,
    FUSION_STAGES,
    PAD_MODES,
    SliceFusion,
    WindowFuser,
    base_slice_weights,
    build_slice_fusion,
    check_num_slices,
    slice_window_indices,
)
from .fusions import (
    AttentionFusion,
    CenterSlice,
    ChannelStack,
    ConvFusion,
    SliceWeights,
    WindowedSliceWeights,
)

__all__ = [k for k in globals().keys() if not k.startswith("_")]
