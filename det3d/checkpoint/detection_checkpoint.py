"""
``DetectionCheckpointer``: fvcore's ``Checkpointer`` with det3d's guarantees.

* **Atomic saves.** A checkpoint (and the ``last_checkpoint`` tag) is written to a temporary file
  in the same directory, flushed to disk and renamed over the target, so a run killed mid-save
  leaves the previous file whole.
* **Safe loads.** Files are read with ``torch.load(..., weights_only=True)``, Detectron2 ``.pkl``
  files (pickled numpy arrays) with a restricted unpickler (``safe_pickle``): tensors and plain
  data only, no pickled code. A file that holds code or other objects is reported as untrusted or
  of another format, a damaged one as corrupt: ``CheckpointError`` naming the file.
* **Partial loads are visible, and refused where they would mislead.** Missing, unexpected and
  wrongly shaped keys are summed up in one warning line and kept in
  ``checkpointer.incompatible_keys``. With ``strict=True`` (evaluation and inference: metrics of a
  mostly random model must not pass for a result), a missing or wrongly shaped model weight is a
  ``CheckpointError`` naming the file; training from a partial checkpoint stays allowed.
"""

import logging
import os
import pickle
import zipfile
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from fvcore.common.checkpoint import Checkpointer, _filter_reused_missing_keys
from torch.nn.parallel import DistributedDataParallel

from det3d.utils import comm
from det3d.utils.file_io import atomic_write

from .safe_pickle import UntrustedPickleError, from_detectron2_pickle, load_pickle_safely

__all__ = ["DetectionCheckpointer", "CheckpointError", "atomic_write", "last_checkpoint_file"]


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be read or does not hold what a checkpoint should."""


def last_checkpoint_file(save_dir: str) -> str:
    """
    The checkpoint a run saved last in ``save_dir`` (named in its ``last_checkpoint`` tag), or ""
    when ``save_dir`` holds no run's checkpoints. An empty tag raises :class:`CheckpointError`.
    """
    if not save_dir:
        return ""
    tag = os.path.join(save_dir, "last_checkpoint")
    try:
        with open(tag) as f:
            last_saved = f.read().strip()
    except OSError:
        return ""
    if not last_saved:
        raise CheckpointError(f"{tag!r} is empty: it should name the last checkpoint file")
    return os.path.join(save_dir, last_saved)


class DetectionCheckpointer(Checkpointer):
    """
    Saves and loads a model and its training state (optimizer, scheduler, ...):

    .. code-block:: python

        checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, optimizer=opt, scheduler=sched)
        checkpointer.save("model_0000999", iteration=999)    # atomic
        extra = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
        start_iter = extra.get("iteration", -1) + 1

    With ``resume=True`` and a ``last_checkpoint`` in ``save_dir``, every checkpointable and the
    extra data are restored from it; otherwise only the model weights of ``path`` are loaded.

    A file that holds an exponential moving average of the weights (``"ema"``, written by a
    training with ``MODEL_EMA.ENABLED``) gives the model that average, the trained model, unless
    this checkpointer restores ``"ema"`` itself (a trainer with ``MODEL_EMA`` resuming): then the
    model gets the raw weights (``"model"``) and the average goes to the trainer's EMA.
    """

    def __init__(
        self,
        model,
        save_dir: str = "",
        *,
        save_to_disk: Optional[bool] = None,
        strict: bool = False,
        **checkpointables,
    ):
        """
        Args:
            model (nn.Module): the model, possibly wrapped in DistributedDataParallel.
            save_dir (str): directory of checkpoints and of the ``last_checkpoint`` tag.
            save_to_disk (bool): whether ``save`` writes; default: on the main process only.
            strict (bool): every model weight must be in the file with the model's shape
                (evaluation, inference); else a load raises ``CheckpointError``. Buffers that
                checkpoints may lack (BatchNorm's ``num_batches_tracked``) are exempt.
            checkpointables: objects with ``state_dict()`` / ``load_state_dict()``.
        """
        self.strict = bool(strict)
        self._loading = ""  # the file being loaded, for the messages
        is_main_process = comm.is_main_process()
        self._wrapped_in_ddp = isinstance(model, DistributedDataParallel)
        super().__init__(
            model,
            save_dir,
            save_to_disk=is_main_process if save_to_disk is None else save_to_disk,
            **checkpointables,
        )
        self.logger = logging.getLogger(__name__)
        self.incompatible_keys = None  # set by each load: fvcore's _IncompatibleKeys
        self._model_from_ema = True  # set by each load: whether "ema" is loaded as the model

    # ------------------------------------------------------------------ saving
    def save(self, name: str, *, tag_last: bool = True, **kwargs: Any) -> None:
        """
        Writes ``<save_dir>/<name>.pth`` atomically, holding ``model``, every checkpointable's
        state and ``kwargs`` (e.g. ``iteration``).

        Args:
            tag_last (bool): whether to name this file in ``last_checkpoint``, which ``--resume``
                starts from. The best-so-far checkpoint is saved with ``tag_last=False``.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"Checkpoint name {name!r} must not contain a directory")
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename), mode="w")

    # ----------------------------------------------------------------- loading
    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """
        Loads ``path`` (see fvcore's ``Checkpointer.load``). Raises ``FileNotFoundError`` if the
        file does not exist and ``CheckpointError`` if it cannot be read, both naming the file.

        Returns:
            dict: what the file holds besides the model and the loaded checkpointables.
        """
        self.incompatible_keys = None
        if not path:
            return super().load(path, checkpointables)
        local_path = path
        if not os.path.isfile(path):
            try:
                local_path = self.path_manager.get_local_path(path)
            except Exception as e:  # iopath raises various errors for unknown paths
                raise FileNotFoundError(f"Checkpoint {path!r} not found ({e})") from e
        has_file = os.path.isfile(local_path)
        if self._wrapped_in_ddp:
            # Every rank loads the same weights; a file seen by only some ranks is an error.
            all_have_file = comm.all_gather(has_file)
            if not all(all_have_file):
                missing_on = [r for r, ok in enumerate(all_have_file) if not ok]
                raise FileNotFoundError(f"Checkpoint {path!r} not found on ranks {missing_on}")
        if not has_file:
            raise FileNotFoundError(f"Checkpoint {path!r} not found")
        self._loading = path
        restored = self.checkpointables if checkpointables is None else checkpointables
        self._model_from_ema = "ema" not in restored
        return super().load(local_path, checkpointables)

    def has_checkpoint(self) -> bool:
        tag = os.path.join(self.save_dir, "last_checkpoint")
        return bool(self.save_dir) and os.path.isfile(tag)

    def get_checkpoint_file(self) -> str:
        """The file named in ``<save_dir>/last_checkpoint``; "" if there is none."""
        return last_checkpoint_file(self.save_dir)

    def _load_file(self, filename: str) -> Dict[str, Any]:
        if zipfile.is_zipfile(filename):  # torch.save's format
            loaded = self._torch_load(filename)
        else:  # a Detectron2 .pkl (pickled numpy arrays), or torch's legacy format
            loaded = self._load_pickle(filename)
        if not isinstance(loaded, dict):
            raise CheckpointError(
                f"Checkpoint {filename!r} holds a {type(loaded).__name__}, not a dict"
            )
        loaded = self._as_model_checkpoint(loaded, filename)
        if isinstance(loaded.get("ema"), dict) and self._model_from_ema:
            self.logger.info(f"{filename}: loading its averaged weights ('ema') as the model")
            loaded["model"] = loaded.pop("ema")
        if not isinstance(loaded["model"], dict):
            raise CheckpointError(f"Checkpoint {filename!r}: 'model' is not a state dict")
        return loaded

    def _torch_load(self, filename: str) -> Any:
        try:
            return torch.load(filename, map_location=torch.device("cpu"), weights_only=True)
        except pickle.UnpicklingError as e:
            detail = _weights_unpickler_detail(str(e))
            if "global" in detail.lower() or "class" in detail.lower():  # refused, not damaged
                raise CheckpointError(_untrusted_message(filename, detail)) from e
            raise CheckpointError(
                f"Checkpoint {filename!r} is corrupt or unreadable ({detail})"
            ) from e
        except Exception as e:  # truncated zip, not a torch file, I/O error, ...
            raise CheckpointError(
                f"Checkpoint {filename!r} is corrupt or unreadable: {type(e).__name__}: {e}"
            ) from e

    def _load_pickle(self, filename: str) -> Any:
        try:
            data = load_pickle_safely(filename)
        except UntrustedPickleError as e:
            raise CheckpointError(
                _untrusted_message(filename, f"it names {e.global_name}")
            ) from None
        except Exception as e:
            try:  # torch's legacy (pre-zip) format also starts with a pickle
                return self._torch_load(filename)
            except CheckpointError:
                raise CheckpointError(
                    f"Checkpoint {filename!r} is corrupt or not a checkpoint: neither a torch file "
                    f"nor a pickle ({type(e).__name__}: {e})"
                ) from e
        if isinstance(data, dict):
            self.logger.info(f"{filename}: read as a Detectron2-format pickle (numpy arrays)")
            try:
                return from_detectron2_pickle(data)
            except TypeError as e:
                raise CheckpointError(f"Checkpoint {filename!r} {e}") from None
        return self._torch_load(filename)  # e.g. the magic number of the legacy torch format

    @staticmethod
    def _as_model_checkpoint(loaded: dict, filename: str) -> dict:
        if "model" in loaded:
            return loaded
        if loaded and all(isinstance(v, (torch.Tensor, np.ndarray)) for v in loaded.values()):
            # a bare state_dict, as torch.save(model.state_dict()) writes
            return {"model": loaded}
        raise CheckpointError(
            f"Checkpoint {filename!r} has no 'model' entry; its keys: {sorted(loaded)}"
        )

    def _load_model(self, checkpoint: Any):
        # fvcore strips a "module." prefix (weights saved from a DDP-wrapped model) and skips
        # tensors whose shape differs from the model's; remember what did not match.
        incompatible = super()._load_model(checkpoint)
        self.incompatible_keys = incompatible
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        """One summary line (a checkpoint of another model would give a warning per tensor);
        with ``strict``, a missing or wrongly shaped weight raises :class:`CheckpointError`."""
        shapes = incompatible.incorrect_shapes
        reshaped = {k for k, _, _ in shapes}
        missing = [
            k
            for k in _filter_reused_missing_keys(self.model, incompatible.missing_keys)
            if k not in reshaped and not k.endswith("num_batches_tracked")
        ]
        unexpected = incompatible.unexpected_keys
        if not (missing or shapes or unexpected):
            return
        total = len(self.model.state_dict())
        parts = [f"{total - len(missing) - len(shapes)} of the model's {total} tensors loaded"]
        if missing:
            parts.append(f"{len(missing)} missing from the file (e.g. {missing[:3]})")
        if shapes:
            k, in_file, in_model = shapes[0]
            parts.append(
                f"{len(shapes)} of another shape (e.g. {k!r}: {tuple(in_file)} in the file, "
                f"{tuple(in_model)} in the model)"
            )
        if unexpected:
            parts.append(
                f"{len(unexpected)} in the file unused by the model (e.g. {unexpected[:3]})"
            )
        summary = f"Checkpoint {self._loading!r}: " + "; ".join(parts)
        if self.strict and (missing or shapes):
            raise CheckpointError(
                summary + ". Evaluation and inference need every weight of the model: is the "
                "file a checkpoint of this config's model (MODEL.WEIGHTS)?"
            )
        self.logger.warning(summary)


def _untrusted_message(filename: str, detail: str) -> str:
    return (
        f"Checkpoint {filename!r} holds pickled code or objects other than tensors, numpy arrays "
        f"and plain data ({detail}): it is untrusted or of another format (not a det3d or "
        f"Detectron2 model file); det3d reads checkpoints with weights_only=True, so it was not "
        f"loaded and nothing in it was run"
    )


def _weights_unpickler_detail(message: str) -> str:
    """The one informative line of torch's long weights_only error message."""
    lines = [ln.strip() for ln in message.splitlines() if ln.strip()]
    for line in lines:
        if "nsupported" in line and "weights_only" not in line:
            return line.split("WeightsUnpickler error:", 1)[-1].strip().split(". Please use")[0]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error" in line:
            rest = line.split("WeightsUnpickler error:", 1)[-1].strip()
            if not rest and i + 1 < len(lines):
                rest = lines[i + 1]
            return rest.split(". Please use")[0]
    return lines[0] if lines else "unpickling failed"
