"""Pictures of volumes: slices with instance outlines drawn over the image, tiled into a montage."""

from typing import Optional, Sequence

import cv2
import numpy as np

from .file_io import atomic_write

__all__ = ["to_uint8", "label_outlines", "draw_slice", "volume_montage", "write_png"]


def to_uint8(image: np.ndarray, percentiles: Sequence[float] = (1.0, 99.8)) -> np.ndarray:
    """Percentile-stretches any numeric array to uint8 (NaNs become 0)."""
    image = np.asarray(image, dtype=np.float32)
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    scaled = (np.nan_to_num(image, nan=lo) - lo) / max(float(hi - lo), 1e-6)
    return (np.clip(scaled, 0, 1) * 255).astype(np.uint8)


def label_outlines(labels: np.ndarray) -> np.ndarray:
    """
    Args:
        labels: (H, W) integer label slice, 0 = background.
    Returns:
        (H, W) bool: voxels of an instance that touch another label (or background) in 4-connectivity.
    """
    labels = np.asarray(labels)
    edge = np.zeros(labels.shape, bool)
    diff_y = labels[1:, :] != labels[:-1, :]
    diff_x = labels[:, 1:] != labels[:, :-1]
    edge[1:, :] |= diff_y
    edge[:-1, :] |= diff_y
    edge[:, 1:] |= diff_x
    edge[:, :-1] |= diff_x
    return edge & (labels > 0)


def _colour(label_id: np.ndarray) -> np.ndarray:
    """A stable, bright colour (BGR) per label id, from a golden-ratio hue walk."""
    hue = ((label_id.astype(np.float64) * 0.61803398875) % 1.0 * 179).astype(np.uint8)
    hsv = np.stack([hue, np.full_like(hue, 220), np.full_like(hue, 255)], axis=-1)
    return cv2.cvtColor(hsv[None], cv2.COLOR_HSV2BGR)[0]


def draw_slice(
    image: np.ndarray, pred_labels: np.ndarray, gt_labels: Optional[np.ndarray] = None
) -> np.ndarray:
    """
    Args:
        image: (H, W) uint8 slice.
        pred_labels: (H, W) predicted instance ids; outlines drawn in one colour per instance.
        gt_labels: optional (H, W) ground-truth ids; outlines drawn in white underneath.
    Returns:
        (H, W, 3) uint8 BGR picture.
    """
    canvas = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if gt_labels is not None:
        canvas[label_outlines(gt_labels)] = (255, 255, 255)
    edge = label_outlines(pred_labels)
    if edge.any():
        canvas[edge] = _colour(pred_labels[edge])
    return canvas


def volume_montage(
    image: np.ndarray,
    pred_labels: np.ndarray,
    gt_labels: Optional[np.ndarray] = None,
    num_slices: int = 8,
    columns: int = 4,
    scale: int = 2,
) -> np.ndarray:
    """
    Tiles ``num_slices`` evenly spaced z-slices of a volume with outlines drawn over them.

    Args:
        image: (D, H, W) or (C, D, H, W) volume (the first channel is shown).
        pred_labels / gt_labels: (D, H, W) label volumes.
    Returns:
        (rows * H * scale, columns * W * scale, 3) uint8 BGR montage.
    """
    if image.ndim == 4:
        image = image[0]
    if image.shape != pred_labels.shape:
        raise ValueError(f"image shape {image.shape} != label shape {pred_labels.shape}")
    depth = image.shape[0]
    zs = np.unique(np.linspace(0, depth - 1, num=min(num_slices, depth)).round().astype(int))
    image8 = to_uint8(image)
    tiles = []
    for z in zs:
        tile = draw_slice(image8[z], pred_labels[z], None if gt_labels is None else gt_labels[z])
        tile = cv2.resize(tile, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cv2.putText(tile, f"z={z}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 255, 255), 1)
        tiles.append(tile)
    columns = min(columns, len(tiles))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_png(path: str, picture: np.ndarray) -> None:
    """Writes a PNG atomically (temporary file in the same folder, then rename)."""
    ok, buf = cv2.imencode(".png", picture)
    if not ok:
        raise OSError(f"Could not encode PNG for {path!r}")
    atomic_write(path, lambda f: f.write(buf.tobytes()))
