"""CfgNode with ``_BASE_`` inheritance and safe yaml loading, and the ``configurable`` decorator."""

import functools
import inspect
import os
from typing import Any, Callable, Dict, List, Optional

from fvcore.common.config import CfgNode as _FvCfgNode

from det3d.bridge.detectron2 import CfgNodeBase

__all__ = [
    "CfgNode",
    "ConfigCycleError",
    "get_cfg",
    "configurable",
    "register_per_axis_key",
    "CONFIG_VERSION",
]

# det3d's config keys are named as in Detectron2's config version 2, and det3d files say
# ``VERSION: 2`` so that Detectron2's CfgNode merges them as they are (it upgrades files of an
# older version with its own key renames). det3d files written before said ``VERSION: 1`` for the
# same keys: det3d's CfgNode reads 1 as 2.
CONFIG_VERSION = 2
_VERSIONS_READ = (1, CONFIG_VERSION)

# Full keys whose value is an int or one value per axis (see det3d/config/defaults.py).
_PER_AXIS_KEYS = set()


def register_per_axis_key(full_key: str) -> None:
    """Declares that ``full_key`` takes an int or a list with one value per axis."""
    _PER_AXIS_KEYS.add(full_key)


class ConfigCycleError(ValueError):
    """Config files whose ``_BASE_`` keys come back to a file already being read."""


# Files being read by load_yaml_with_base, outermost first (one chain at a time per process).
_BASE_CHAIN: List[str] = []


class CfgNode(CfgNodeBase):
    """
    A yacs/fvcore CfgNode (Detectron2's CfgNode class where detectron2 is importable, so
    Detectron2's helpers take it) that:

    * reads yaml with ``yaml.safe_load`` only (no python objects in config files);
    * follows ``_BASE_`` keys (paths relative to the file that names them);
    * rejects unknown keys with an error that names the key and the file;
    * reads ``VERSION`` 2 (Detectron2's key names) or 1 (the same keys, in older det3d files), and
      rejects any other version, naming the file;
    * lets a key registered with :func:`register_per_axis_key` be given as an int or as one value
      per axis (``POOLER_RESOLUTION: 7`` or ``[3, 7, 7]``), whatever form its default has;
    * on the command line, takes one plain string for a list of strings
      (``DATASETS.TRAIN my_dataset`` = ``DATASETS.TRAIN "('my_dataset',)"``).
      Other type changes are rejected as yacs rejects them.
    """

    @classmethod
    def load_yaml_with_base(cls, filename: str, allow_unsafe: bool = False) -> Dict[str, Any]:
        """fvcore's, plus: a ``_BASE_`` chain that comes back to a file is a
        :class:`ConfigCycleError` naming the files, not a RecursionError."""
        key = os.path.realpath(filename) if isinstance(filename, str) else filename
        if key in _BASE_CHAIN:
            files = _BASE_CHAIN[_BASE_CHAIN.index(key) :] + [key]
            raise ConfigCycleError("_BASE_ cycle: " + " -> ".join(map(str, files)))
        _BASE_CHAIN.append(key)
        try:
            return super().load_yaml_with_base(filename, allow_unsafe=allow_unsafe)
        finally:
            _BASE_CHAIN.pop()

    def merge_from_file(self, cfg_filename: str, allow_unsafe: bool = False) -> None:
        if allow_unsafe:
            raise ValueError(
                "det3d reads config files with safe yaml loading only (allow_unsafe=True)"
            )
        if not os.path.isfile(cfg_filename):
            raise FileNotFoundError(f"Config file {cfg_filename!r} does not exist")
        try:
            loaded = self.load_yaml_with_base(cfg_filename, allow_unsafe=False)
        except ConfigCycleError:
            raise
        except Exception as e:  # yaml.YAMLError and friends: say which file
            raise ValueError(f"Could not parse config file {cfg_filename!r}: {e}") from e
        loaded = type(self)(loaded)
        _check_version(loaded, cfg_filename)
        _allow_per_axis_values(self, loaded)
        try:
            self.merge_from_other_cfg(loaded)
        except KeyError as e:
            raise KeyError(f"{e.args[0]} (in config file {cfg_filename!r})") from None

    def merge_from_list(self, cfg_list: list) -> None:
        if len(cfg_list) % 2 != 0:
            raise ValueError(
                f"Config overrides must come as KEY VALUE pairs; got an odd number: {cfg_list}"
            )
        rest = []
        for full_key, raw in zip(cfg_list[0::2], cfg_list[1::2]):
            node, key = _parent(self, full_key)
            if node is not None and full_key in _PER_AXIS_KEYS:
                new = self._decode_cfg_value(raw)
                if _is_per_axis_swap(node[key], new):
                    node[key] = new
            if node is not None and _is_str_sequence(node[key]):
                new = self._decode_cfg_value(raw)
                if isinstance(new, str):  # one name for a list of names: DATASETS.TRAIN my_set
                    if self.is_frozen():
                        raise AttributeError(f"Attempted to set {full_key} on a frozen config")
                    node[key] = type(node[key])([new])
                    continue
            rest += [full_key, raw]
        try:
            super().merge_from_list(rest)
        except AssertionError as e:  # yacs asserts on unknown keys; callers expect a KeyError
            raise KeyError(str(e)) from None


def _check_version(loaded: _FvCfgNode, cfg_filename: str) -> None:
    """Sets a file's ``VERSION`` 1 to 2 (same keys); raises on a version det3d cannot read."""
    version = loaded.get("VERSION", None)
    if version is None:
        return
    if version not in _VERSIONS_READ:
        raise ValueError(
            f"Config file {cfg_filename!r} has VERSION {version!r}; det3d reads VERSION "
            f"{CONFIG_VERSION} (Detectron2's key names; 1 is read as 2)"
        )
    loaded.VERSION = CONFIG_VERSION


def _is_str_sequence(x: Any) -> bool:
    """A tuple/list whose entries (if any) are all strings, e.g. ``DATASETS.TRAIN``."""
    return isinstance(x, (list, tuple)) and all(isinstance(v, str) for v in x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_int_list(x: Any) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and all(_is_int(v) for v in x)


def _is_per_axis_swap(old: Any, new: Any) -> bool:
    """True when one of ``old``/``new`` is an int and the other a list of ints (per axis)."""
    return (_is_int(old) and _is_int_list(new)) or (_is_int_list(old) and _is_int(new))


def _parent(cfg: _FvCfgNode, full_key: str):
    """The node holding ``full_key`` and the last key, or (None, None) if the key is unknown."""
    node = cfg
    *path, last = full_key.split(".")
    for k in path:
        if not isinstance(node, _FvCfgNode) or k not in node:
            return None, None
        node = node[k]
    if not isinstance(node, _FvCfgNode) or last not in node:
        return None, None
    return node, last


def _allow_per_axis_values(cfg: _FvCfgNode, loaded: _FvCfgNode, prefix: str = "") -> None:
    """Where ``loaded`` swaps an int for a per-axis list (or back), take its value as it is."""
    for k, v in loaded.items():
        if k not in cfg:
            continue
        if isinstance(v, _FvCfgNode) and isinstance(cfg[k], _FvCfgNode):
            _allow_per_axis_values(cfg[k], v, f"{prefix}{k}.")
        elif f"{prefix}{k}" in _PER_AXIS_KEYS and _is_per_axis_swap(cfg[k], v):
            cfg[k] = v


def get_cfg() -> CfgNode:
    """
    Returns:
        CfgNode: a fresh copy of det3d's default config (see ``det3d/config/defaults.py``).
    """
    from .defaults import _C

    return _C.clone()


def configurable(init_func: Optional[Callable] = None, *, from_config: Optional[Callable] = None):
    """
    Lets a class ``__init__`` (or a function) be called either with plain arguments or with a
    CfgNode as first argument, in which case ``from_config(cfg, ...)`` turns the config into the
    keyword arguments. Detectron2's pattern:

    .. code-block:: python

        class A:
            @configurable
            def __init__(self, *, a, b=2): ...

            @classmethod
            def from_config(cls, cfg, input_shape):
                return {"a": cfg.X, "b": input_shape}

        A(a=1)           # plain arguments
        A(cfg, shape)    # from a config

        @configurable(from_config=lambda cfg: {"x": cfg.X})
        def f(x, y=1): ...
    """
    if init_func is not None:
        assert (
            inspect.isfunction(init_func)
            and from_config is None
            and init_func.__name__ == "__init__"
        ), "@configurable without arguments decorates a class __init__"

        @functools.wraps(init_func)
        def wrapped(self, *args, **kwargs):
            try:
                from_config_func = type(self).from_config
            except AttributeError as e:
                raise AttributeError(
                    f"{type(self).__name__} uses @configurable but defines no 'from_config' classmethod"
                ) from e
            if not inspect.ismethod(from_config_func):
                raise TypeError(f"{type(self).__name__}.from_config must be a classmethod")
            if _called_with_cfg(*args, **kwargs):
                explicit_args = _get_args_from_config(from_config_func, *args, **kwargs)
                init_func(self, **explicit_args)
            else:
                init_func(self, *args, **kwargs)

        return wrapped

    assert inspect.isfunction(from_config), "from_config must be a function"

    def wrapper(orig_func):
        @functools.wraps(orig_func)
        def wrapped(*args, **kwargs):
            if _called_with_cfg(*args, **kwargs):
                explicit_args = _get_args_from_config(from_config, *args, **kwargs)
                return orig_func(**explicit_args)
            return orig_func(*args, **kwargs)

        wrapped.from_config = from_config
        return wrapped

    return wrapper


def _is_cfg(x: Any) -> bool:
    # Any yacs CfgNode counts, so a Detectron2 CfgNode (after add_det3d_config) works too.
    try:
        from yacs.config import CfgNode as _YacsCfgNode
    except ImportError:  # pragma: no cover - yacs is a dependency
        return isinstance(x, _FvCfgNode)
    return isinstance(x, _YacsCfgNode)


def _called_with_cfg(*args, **kwargs) -> bool:
    if len(args) and _is_cfg(args[0]):
        return True
    return _is_cfg(kwargs.pop("cfg", None))


def _get_args_from_config(from_config_func: Callable, *args, **kwargs) -> dict:
    """Calls ``from_config`` with the arguments it accepts; extra keyword arguments override."""
    signature = inspect.signature(from_config_func)
    if list(signature.parameters.keys())[0] != "cfg":
        name = getattr(from_config_func, "__name__", repr(from_config_func))
        raise TypeError(f"{name}.from_config must take 'cfg' as its first argument")
    support_var_arg = any(
        p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in signature.parameters.values()
    )
    if support_var_arg:
        return from_config_func(*args, **kwargs)
    supported = set(signature.parameters.keys())
    extra_kwargs = {name: kwargs.pop(name) for name in list(kwargs.keys()) if name not in supported}
    ret = from_config_func(*args, **kwargs)
    ret.update(extra_kwargs)
    return ret
