"""``collect_env_info()``: a table of the software and hardware a run used (logged at start)."""

import importlib
import importlib.util
import os
import platform
import sys
from collections import OrderedDict
from typing import List, Tuple

import numpy as np
import torch

__all__ = ["collect_env_info"]


def _version_of(module_name: str) -> str:
    try:
        module = importlib.import_module(module_name)
    except Exception:  # ImportError, or a broken install raising something else
        return "not found"
    return str(getattr(module, "__version__", "unknown"))


def _det3d_info() -> List[Tuple[str, str]]:
    rows = []
    try:
        import det3d

        rows.append(("det3d", f"{det3d.__version__} @{os.path.dirname(det3d.__file__)}"))
    except ImportError:
        return [("det3d", "failed to import")]
    try:
        from det3d import _C  # noqa: F401  (registers torch.ops.det3d.*)

        rows.append(("det3d._C", f"loaded from {getattr(_C, '__file__', '?')}"))
        ops = sorted(n for n in dir(torch.ops.det3d) if not n.startswith("_"))
        names = []
        for op in ops:
            packet = getattr(torch.ops.det3d, op)
            if not hasattr(packet, "overloads"):
                continue
            try:
                schema_op = getattr(packet, packet.overloads()[0]) if packet.overloads() else None
                keys = []
                for k in ("CPU", "CUDA"):
                    if schema_op is not None and torch._C._dispatch_has_kernel_for_dispatch_key(
                        schema_op.name(), k
                    ):
                        keys.append(k)
                names.append(f"{op}[{','.join(keys)}]" if keys else op)
            except Exception:
                names.append(op)
        rows.append(("det3d ops", ", ".join(names) if names else "none registered"))
    except Exception as e:  # ImportError or a failure in the library's load
        rows.append(("det3d._C", f"not loaded ({type(e).__name__}: {e})"))
    return rows


def collect_env_info() -> str:
    """
    Returns:
        str: one ``name  value`` line per item: platform, python, numpy, torch (+ CUDA and GPUs),
        det3d and its compiled ops, fvcore, iopath, yacs, pycocotools, tifffile, scipy, ...
    """
    data = OrderedDict()
    data["sys.platform"] = sys.platform
    data["platform"] = platform.platform()
    data["Python"] = sys.version.replace("\n", "")
    data["numpy"] = np.__version__
    for k, v in _det3d_info():
        data[k] = v
    data["PyTorch"] = f"{torch.__version__} @{os.path.dirname(torch.__file__)}"
    data["PyTorch debug build"] = str(torch.version.debug)
    data["torch.cuda.is_available"] = str(torch.cuda.is_available())
    data["torch CUDA version"] = str(torch.version.cuda)
    if torch.cuda.is_available():
        devices = {}
        for i in range(torch.cuda.device_count()):
            cap = ".".join(str(x) for x in torch.cuda.get_device_capability(i))
            name = f"{torch.cuda.get_device_name(i)} (arch={cap})"
            devices.setdefault(name, []).append(str(i))
        for name, ids in devices.items():
            data["GPU " + ",".join(ids)] = name
        data["cuDNN"] = str(torch.backends.cudnn.version())
        data["CUDA_HOME"] = os.environ.get("CUDA_HOME", "None")
    data["torch threads"] = str(torch.get_num_threads())
    data["CPU count"] = str(os.cpu_count())
    for mod in ("fvcore", "iopath", "yacs", "pycocotools", "tifffile", "scipy", "cv2", "zarr"):
        data[mod] = _version_of(mod)
    data["detectron2"] = _version_of("detectron2") if _has_module("detectron2") else "not installed"
    width = max(len(k) for k in data)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in data.items())


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


if __name__ == "__main__":
    print(collect_env_info())
