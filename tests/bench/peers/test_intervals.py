"""Bootstrap intervals of the peers table (bench/peers/intervals.py)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


def _load(name):
    path = os.path.join(ROOT, "bench", "peers", f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"peers_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def iv():
    return _load("intervals")


def _vol(sum_jaccard, n_objects, tp, fp, fn):
    return dict(sum_jaccard=sum_jaccard, n_objects=n_objects, tp=tp, fp=fp, fn=fn)


def test_point_values_pool_the_volumes_as_the_evaluators_do(iv):
    per_volume = {
        "a": {0: _vol(4.0, 5, 5, 1, 0), 1: _vol(1.0, 3, 1, 0, 2), 2: _vol(0.0, 0, 0, 2, 0)}
    }
    out = iv.volume_bootstrap(per_volume, samples=50)
    seg, f1 = out["methods"]["a"]["SEG"], out["methods"]["a"]["f1@0.5"]
    assert seg[0] == pytest.approx(5.0 / 8.0)
    assert f1[0] == pytest.approx(2 * 6 / (2 * 6 + 3 + 2))
    assert seg[1] <= seg[0] <= seg[2] and f1[1] <= f1[0] <= f1[2]
    assert out["volumes"] == 3 and out["samples"] == 50 and "differences" not in out


def test_two_volumes_give_the_two_extreme_draws_as_the_interval(iv):
    # Two volumes: a draw holds both of one (prob. 1/4 each) or one of each (1/2), so the 2.5th
    # and 97.5th percentiles of 4000 draws are the all-one-volume values.
    per_volume = {"a": {0: _vol(9.0, 10, 10, 0, 0), 1: _vol(2.0, 4, 2, 1, 2)}}
    lo_seg, hi_seg = 2.0 / 4.0, 9.0 / 10.0
    lo_f1, hi_f1 = 4.0 / 7.0, 1.0
    out = iv.volume_bootstrap(per_volume, samples=4000, seed=3)["methods"]["a"]
    assert out["SEG"][1:] == pytest.approx([lo_seg, hi_seg])
    assert out["f1@0.5"][1:] == pytest.approx([lo_f1, hi_f1])
    # 90%: the 5th percentile still falls among the all-volume-1 draws
    out = iv.volume_bootstrap(per_volume, samples=4000, seed=3, level=0.9)["methods"]["a"]
    assert out["SEG"][1:] == pytest.approx([lo_seg, hi_seg])
    # 40%: the 30th-70th percentiles are the mixed draw, (9 + 2) / (10 + 4)
    out = iv.volume_bootstrap(per_volume, samples=4000, seed=3, level=0.4)["methods"]["a"]
    assert out["SEG"][1:] == pytest.approx([11.0 / 14.0, 11.0 / 14.0])


def test_differences_are_paired_over_the_same_draws(iv):
    rng = np.random.default_rng(0)
    sizes, quality = rng.integers(3, 12, 10), rng.uniform(0.6, 0.95, 10)
    a = {i: _vol(float(n * q), n, n, 0, 0) for i, (n, q) in enumerate(zip(sizes, quality))}
    same = iv.volume_bootstrap({"a": a, "b": dict(a)}, reference="a", samples=500)
    assert same["differences"]["b"]["SEG"] == [0.0, 0.0, 0.0]
    # b loses a fifth of one object in every volume: a leads in every draw, by different amounts
    b = {i: dict(v, sum_jaccard=v["sum_jaccard"] - 0.2, tp=v["tp"] - 1, fn=1) for i, v in a.items()}
    out = iv.volume_bootstrap({"a": a, "b": b}, reference="a", samples=500)
    value, lo, hi = out["differences"]["b"]["SEG"]
    n = sum(v["n_objects"] for v in a.values())
    assert value == pytest.approx(2.0 / n)
    assert 0.0 < lo < value < hi
    assert out["differences"]["b"]["f1@0.5"][1] > 0.0
    # unpaired, the two intervals overlap although every draw ranks a first
    assert out["methods"]["b"]["SEG"][2] > out["methods"]["a"]["SEG"][1]


def test_bad_input_is_named(iv):
    a = {0: _vol(1.0, 1, 1, 0, 0), 1: _vol(1.0, 1, 1, 0, 0)}
    with pytest.raises(ValueError, match="b was scored on volumes \\[0\\]"):
        iv.volume_bootstrap({"a": a, "b": {0: a[0]}})
    with pytest.raises(ValueError, match="reference 'c'"):
        iv.volume_bootstrap({"a": a}, reference="c")
    with pytest.raises(ValueError, match="no test volumes"):
        iv.volume_bootstrap({"a": {}})
    with pytest.raises(ValueError, match="samples 0"):
        iv.volume_bootstrap({"a": a}, samples=0)


def test_per_volume_sums_from_the_evaluators_files(iv, synthetic_root, tmp_path):
    from det3d.data import DatasetCatalog, set_synthetic_root
    from det3d.data.io import write_volume
    from det3d.evaluation.ground_truth import gt_label_volume

    sys_path = list(sys.path)
    sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))
    try:
        score = _load("score")
    finally:
        sys.path[:] = sys_path
    set_synthetic_root(synthetic_root)
    records = DatasetCatalog.get("synthetic_tiny_val")
    pred_dir = tmp_path / "pred"
    pred_dir.mkdir()
    n_true = []
    for k, r in enumerate(records):
        gt = gt_label_volume(r)
        n_true.append(len(np.unique(gt)) - 1)
        if k == 0:
            gt[gt == 1] = 0  # the first volume's object 1 is missed
        write_volume(str(pred_dir / f"{score.record_stem(r)}.tif"), gt.astype(np.int32))
    scores = score.score_label_folder("synthetic_tiny_val", str(pred_dir), str(tmp_path / "ev"))
    per_volume = iv.read_per_volume(str(tmp_path / "ev"))
    ids = sorted(r["image_id"] for r in records)
    assert sorted(per_volume) == ids
    first, rest = per_volume[ids[0]], [per_volume[i] for i in ids[1:]]
    assert (first["tp"], first["fn"], first["fp"]) == (n_true[0] - 1, 1, 0)
    assert first["sum_jaccard"] == pytest.approx(n_true[0] - 1)
    assert all(v["fn"] == 0 and v["fp"] == 0 for v in rest)
    out = iv.volume_bootstrap({"m": per_volume}, samples=100)["methods"]["m"]
    assert out["SEG"][0] == pytest.approx(scores["SEG"])
    assert out["f1@0.5"][0] == pytest.approx(scores["f1@0.5"])

    # a file without per-volume sums is named
    seg = json.loads((tmp_path / "ev" / "seg_results.json").read_text())
    del seg["per_volume"]
    (tmp_path / "ev" / "seg_results.json").write_text(json.dumps(seg))
    with pytest.raises(KeyError, match="seg_results.json has no per_volume"):
        iv.read_per_volume(str(tmp_path / "ev"))


def test_format_names_each_row_and_the_lead(iv):
    a = {0: _vol(1.0, 2, 2, 0, 0), 1: _vol(1.5, 2, 2, 0, 0)}
    b = {0: _vol(0.5, 2, 1, 0, 1), 1: _vol(1.0, 2, 2, 1, 0)}
    out = iv.volume_bootstrap({"det3d": a, "peer": b}, reference="det3d", samples=200)
    labels = {"det3d": "det3d (planned)", "peer": "Peer"}
    # the statistics under the table's names, from the module that names them
    lines = iv.format_intervals(out, labels, "det3d", _load("score").SCORE_NAMES)
    assert lines[0].startswith("  95% intervals, the 2 test volumes drawn with replacement 200")
    assert lines[1].startswith("    det3d (planned): SEG ") and ", F1@0.5 " in lines[1]
    assert lines[3].startswith("    det3d (planned) minus Peer: SEG +0.250 (")
