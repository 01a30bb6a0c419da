"""Writes a :class:`Plan` as a yaml config whose comments say why each value was chosen."""

import os
from typing import Dict, Optional

import yaml

from det3d.utils.file_io import atomic_write

from .planner import Plan

__all__ = ["planned_config_text", "write_planned_config"]

_ORDER = ("MODEL", "INPUT", "DATASETS", "DATALOADER", "SOLVER", "TEST")


def _flow(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    text = yaml.safe_dump(value, default_flow_style=True, width=1000).strip()
    return text.removesuffix("...").strip()


def planned_config_text(plan: Plan, base: str, header: str, extra: Optional[Dict] = None) -> str:
    """
    Args:
        plan: the planned keys and reasons.
        base: the ``_BASE_`` path, relative to where the file will live.
        header: comment lines to put first (without ``#``).
        extra: more full key -> value pairs (datasets, output dir), written without reasons.

    Returns:
        yaml text that det3d's ``get_cfg().merge_from_file`` reads.
    """
    values = dict(plan.values)
    reasons = dict(plan.reasons)
    for k, v in (extra or {}).items():
        values[k] = v
    tree: Dict = {}
    for key in values:
        node = tree
        *path, last = key.split(".")
        for k in path:
            node = node.setdefault(k, {})
        node[last] = key
    lines = [f"# {h}" if h else "#" for h in header.splitlines()]
    lines.append(f"_BASE_: {_flow(base)}")

    def emit(node: Dict, indent: int) -> None:
        top = indent == 0
        keys = sorted(node, key=lambda k: (_ORDER.index(k) if top and k in _ORDER else 99))
        said = None  # a reason shared by consecutive keys is written once
        for k in keys:
            v = node[k]
            pad = "  " * indent
            if isinstance(v, dict):
                lines.append(f"{pad}{k}:")
                emit(v, indent + 1)
                said = None
                continue
            if v in reasons and reasons[v] != said:
                lines.append(f"{pad}# {reasons[v]}")
            said = reasons.get(v)
            lines.append(f"{pad}{k}: {_flow(values[v])}")

    emit(tree, 0)
    return "\n".join(lines) + "\n"


def write_planned_config(path: str, text: str, overwrite: bool = False) -> None:
    """Writes ``text`` atomically; an existing file is kept unless ``overwrite``."""
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, lambda f: f.write(text), mode="w")
