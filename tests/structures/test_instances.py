import pytest
import torch

from det3d.structures.boxes import Boxes
from det3d.structures.instances import Instances


def make(n=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    lo = torch.rand(n, 3, generator=g) * 10
    inst = Instances((8, 16, 16))
    inst.gt_boxes = Boxes(torch.cat([lo, lo + 2], dim=1))
    inst.gt_classes = torch.arange(n)
    inst.set("names", [f"cell{i}" for i in range(n)])
    return inst


def test_fields_and_access():
    inst = make()
    assert len(inst) == 4 and inst.image_size == (8, 16, 16)
    assert inst.has("gt_boxes") and not inst.has("gt_masks")
    assert inst.get("gt_classes") is inst.gt_classes
    assert set(inst.get_fields()) == {"gt_boxes", "gt_classes", "names"}
    inst.remove("names")
    assert not inst.has("names")
    with pytest.raises(AttributeError, match="scores"):
        inst.scores
    with pytest.raises(KeyError):
        inst.remove("names")


def test_length_mismatch_names_field():
    inst = make()
    with pytest.raises(ValueError, match="scores"):
        inst.scores = torch.zeros(3)


def test_len_of_empty_raises():
    with pytest.raises(NotImplementedError):
        len(Instances((4, 4)))


def test_indexing():
    inst = make()
    one = inst[2]
    assert len(one) == 1 and one.gt_classes.tolist() == [2] and one.names == ["cell2"]
    assert inst[-1].gt_classes.tolist() == [3]
    assert inst[1:3].gt_classes.tolist() == [1, 2]
    del inst._fields["names"]  # lists cannot take tensor indices
    mask = torch.tensor([True, False, False, True])
    sub = inst[mask]
    assert sub.gt_classes.tolist() == [0, 3]
    assert torch.equal(sub.gt_boxes.tensor, inst.gt_boxes.tensor[mask])
    assert inst[torch.tensor([3, 1])].gt_classes.tolist() == [3, 1]
    with pytest.raises(IndexError):
        inst[4]


def test_cat_and_to():
    a, b = make(3, seed=1), make(2, seed=2)
    c = Instances.cat([a, b])
    assert len(c) == 5 and c.gt_classes.tolist() == [0, 1, 2, 0, 1]
    assert torch.equal(c.gt_boxes.tensor, torch.cat([a.gt_boxes.tensor, b.gt_boxes.tensor]))
    assert c.names == a.names + b.names
    with pytest.raises(ValueError, match="image sizes"):
        Instances.cat([a, Instances((1, 1, 1), gt_classes=torch.zeros(1))])
    moved = c.to("cpu")
    assert moved.names == c.names and moved is not c
    assert "num_instances=5" in repr(c) and "image_size=(8, 16, 16)" in repr(c)
