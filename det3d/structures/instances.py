"""Per-image (per-volume) instance annotations or predictions: Detectron2's ``Instances``."""

import itertools
from typing import Any, Dict, List, Tuple, Union

import torch

__all__ = ["Instances"]


class Instances:
    """
    A list of N instances of one image or volume, stored as "fields": every field (Boxes, BitMasks,
    tensors, lists, ...) has length N, and row ``i`` of every field describes instance ``i``.

    Invariants: all fields have the same ``len``; ``image_size`` is the spatial shape of the image
    the instances belong to, ``(D, H, W)`` or ``(H, W)``.

    Example::

        inst = Instances((32, 128, 128))
        inst.gt_boxes = Boxes(torch.tensor([[0.0, 0, 0, 10, 10, 4]]))
        inst.gt_classes = torch.tensor([0])
        big = inst[inst.gt_boxes.volume() > 100]
        category_3 = inst[inst.gt_classes == 3]
        inst.has("gt_masks")  # False

    A field can be any object that has ``__len__`` and ``__getitem__`` (with int, slice, bool and
    long tensors); ``to`` moves fields that have a ``to`` method and leaves the others, and
    ``cat`` concatenates tensors, lists, and types with a ``cat`` class method.
    """

    def __init__(self, image_size: Tuple[int, ...], **kwargs: Any):
        """
        Args:
            image_size: spatial shape ``(D, H, W)`` or ``(H, W)``.
            kwargs: fields to add.
        """
        self._image_size = tuple(int(s) for s in image_size)
        self._fields: Dict[str, Any] = {}
        for k, v in kwargs.items():
            self.set(k, v)

    @property
    def image_size(self) -> Tuple[int, ...]:
        """Spatial shape ``(D, H, W)`` / ``(H, W)``."""
        return self._image_size

    def __setattr__(self, name: str, val: Any) -> None:
        if name.startswith("_"):
            super().__setattr__(name, val)
        else:
            self.set(name, val)

    def __getattr__(self, name: str) -> Any:
        # Called only when normal lookup fails; _fields may not exist yet during unpickling.
        if name == "_fields" or name not in self.__dict__.get("_fields", {}):
            raise AttributeError(f"Cannot find field '{name}' in the given Instances!")
        return self._fields[name]

    def set(self, name: str, value: Any) -> None:
        """Sets field ``name``; its length must equal that of the existing fields."""
        data_len = len(value)
        if len(self._fields):
            if len(self) != data_len:
                raise ValueError(
                    f"Adding a field '{name}' of length {data_len} to Instances of length "
                    f"{len(self)} (fields: {', '.join(self._fields)})"
                )
        self._fields[name] = value

    def has(self, name: str) -> bool:
        return name in self._fields

    def remove(self, name: str) -> None:
        if name not in self._fields:
            raise KeyError(f"Instances has no field '{name}' to remove")
        del self._fields[name]

    def get(self, name: str) -> Any:
        return self._fields[name]

    def get_fields(self) -> Dict[str, Any]:
        """The dict ``name -> field``. Changing it changes this Instances."""
        return self._fields

    def to(self, *args: Any, **kwargs: Any) -> "Instances":
        """A new Instances whose fields were moved with ``field.to(*args, **kwargs)`` where they
        have a ``to`` method."""
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            if hasattr(v, "to"):
                v = v.to(*args, **kwargs)
            ret.set(k, v)
        return ret

    def __getitem__(self, item: Union[int, slice, torch.Tensor]) -> "Instances":
        """
        Args:
            item: int (gives an Instances of length 1), slice, bool mask or long index tensor.

        Returns:
            Instances whose every field is indexed by ``item``.
        """
        if type(item) is int:
            if item >= len(self) or item < -len(self):
                raise IndexError(f"Instances index {item} out of range for length {len(self)}")
            item = slice(item, None, len(self)) if item >= 0 else slice(item, item + 1 or None)
        ret = Instances(self._image_size)
        for k, v in self._fields.items():
            ret.set(k, v[item])
        return ret

    def __len__(self) -> int:
        for v in self._fields.values():
            # Every field has the same length (checked in set), so the first one answers.
            return v.__len__()
        raise NotImplementedError("Empty Instances does not support __len__!")

    def __iter__(self):
        raise NotImplementedError("Instances object is not iterable!")

    @staticmethod
    def cat(instance_lists: List["Instances"]) -> "Instances":
        """
        Concatenates Instances of the same image_size and fields.

        Returns:
            Instances
        """
        if not all(isinstance(i, Instances) for i in instance_lists):
            raise TypeError("Instances.cat expects a list of Instances")
        if len(instance_lists) == 0:
            raise ValueError("Instances.cat needs at least one Instances")
        if len(instance_lists) == 1:
            return instance_lists[0]

        image_size = instance_lists[0].image_size
        names = set(instance_lists[0]._fields)
        for i in instance_lists[1:]:
            if i.image_size != image_size:
                raise ValueError(
                    f"Instances.cat: image sizes {image_size} and {i.image_size} differ"
                )
            if set(i._fields) != names:
                raise ValueError(
                    f"Instances.cat: fields {sorted(names)} and {sorted(i._fields)} differ"
                )
        ret = Instances(image_size)
        for k in instance_lists[0]._fields:
            values = [i.get(k) for i in instance_lists]
            v0 = values[0]
            if isinstance(v0, torch.Tensor):
                values = torch.cat(values, dim=0)
            elif isinstance(v0, list):
                values = list(itertools.chain(*values))
            elif hasattr(type(v0), "cat"):
                values = type(v0).cat(values)
            else:
                raise ValueError(f"Instances.cat: unsupported type {type(v0)} of field '{k}'")
            ret.set(k, values)
        return ret

    def __repr__(self) -> str:
        s = self.__class__.__name__ + "("
        s += f"num_instances={len(self._fields) and len(self)}, "
        s += f"image_size={self._image_size}, "
        s += "fields=[{}])".format(", ".join(f"{k}: {v}" for k, v in self._fields.items()))
        return s

    __str__ = __repr__
