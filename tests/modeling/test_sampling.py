import torch

from det3d.modeling.sampling import subsample_labels


def _labels(num_pos, num_neg, num_ignore, seed=0):
    labels = torch.cat([torch.ones(num_pos), torch.zeros(num_neg), -torch.ones(num_ignore)]).long()
    g = torch.Generator().manual_seed(seed)
    return labels[torch.randperm(len(labels), generator=g)]


def test_fraction_respected():
    torch.manual_seed(0)
    labels = _labels(100, 1000, 50)
    pos, neg = subsample_labels(labels, 256, 0.25, 0)
    assert len(pos) == 64 and len(neg) == 192
    assert (labels[pos] == 1).all() and (labels[neg] == 0).all()
    assert len(set(pos.tolist())) == 64 and len(set(neg.tolist())) == 192


def test_few_positives_filled_with_negatives():
    torch.manual_seed(0)
    labels = _labels(10, 1000, 50)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert len(pos) == 10 and len(neg) == 246


def test_few_of_both():
    torch.manual_seed(0)
    labels = _labels(3, 5, 50)
    pos, neg = subsample_labels(labels, 256, 0.5, 0)
    assert len(pos) == 3 and len(neg) == 5


def test_other_bg_label_and_multiclass():
    torch.manual_seed(0)
    # classes 0..2 foreground, 3 background (the ROI heads' convention)
    labels = torch.tensor([0, 1, 2, 3, 3, 3, 3, -1])
    pos, neg = subsample_labels(labels, 4, 0.5, 3)
    assert len(pos) == 2 and len(neg) == 2
    assert (labels[pos] != 3).all() and (labels[neg] == 3).all()


def test_deterministic_under_seed():
    labels = _labels(100, 1000, 50)
    torch.manual_seed(5)
    a = subsample_labels(labels, 128, 0.25, 0)
    torch.manual_seed(5)
    b = subsample_labels(labels, 128, 0.25, 0)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
