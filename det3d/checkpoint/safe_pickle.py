"""
Reading Detectron2-format ``.pkl`` model files (the model zoo's format: a pickled dict whose
``"model"`` entry maps names to numpy arrays) without running code from them.

A plain ``pickle.load`` executes whatever a file names; this unpickler resolves only the few
globals that numpy arrays and plain containers need, and refuses any other, so a file holding code
is reported as untrusted and never run.
"""

import io
import pickle
from typing import Any, Dict

__all__ = ["UntrustedPickleError", "load_pickle_safely", "from_detectron2_pickle"]

# What a pickled dict of numpy arrays needs, in numpy 1 and numpy 2 spellings; nothing that runs
# code or touches the system.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # bytes in protocol-2 pickles written by python 3
}


class UntrustedPickleError(pickle.UnpicklingError):
    """A pickle that names a global outside the allowed ones (code, or objects of other types)."""

    def __init__(self, module: str, name: str):
        super().__init__(f"{module}.{name}")
        self.global_name = f"{module}.{name}"


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise UntrustedPickleError(module, name)
        return super().find_class(module, name)


def load_pickle_safely(path: str) -> Any:
    """
    Unpickles ``path`` allowing only numpy arrays, numpy scalars and plain python data.

    Raises:
        UntrustedPickleError: the file names another global (it was not run).
        pickle.UnpicklingError, EOFError, ...: not a pickle, or a damaged one.
    """
    with open(path, "rb") as f:
        data = f.read()
    # latin1: Detectron2's and Caffe2's files were pickled by python 2 (as Detectron2 reads them)
    return _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def from_detectron2_pickle(data: Any) -> Dict[str, Any]:
    """
    A loaded ``.pkl`` as a checkpoint dict, as Detectron2's checkpointer reads one: ``{"model":
    ...}`` files keep their entries; Caffe2 ``{"blobs": ...}`` files give their blobs as the model
    (``_momentum`` entries dropped); a bare dict of arrays is the model itself.

    Names are used as they are (Detectron2's name-matching heuristics for Caffe2 names are not
    applied): a file of another model fails the strict check of evaluation.

    Returns:
        dict with ``"model"`` (name -> numpy array) and the file's other entries.
    """
    if not isinstance(data, dict):
        raise TypeError(f"holds a pickled {type(data).__name__}, not a dict")
    if "model" in data:
        out = {k: v for k, v in data.items() if k != "model"}
        out["model"] = dict(data["model"])
        return out
    if "blobs" in data:
        blobs = {k: v for k, v in data["blobs"].items() if not k.endswith("_momentum")}
        return {"model": blobs, "__author__": "Caffe2"}
    return {"model": dict(data)}
