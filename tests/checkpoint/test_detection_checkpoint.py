import os

import pytest
import torch
from torch import nn

from det3d.checkpoint import CheckpointError, DetectionCheckpointer


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


def _train_a_bit(model, opt, steps=3):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(5, 3)).pow(2).mean().backward()
        opt.step()


def _same_state(a, b):
    assert a.keys() == b.keys()
    return all(torch.equal(a[k], b[k]) for k in a)


def test_save_and_resume_restores_model_optimizer_and_extra(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_a_bit(model, opt)
    DetectionCheckpointer(model, str(tmp_path), optimizer=opt).save("model_0000009", iteration=9)

    model2 = _model(seed=1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5, momentum=0.9)
    ck2 = DetectionCheckpointer(model2, str(tmp_path), optimizer=opt2)
    extra = ck2.resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    assert _same_state(model.state_dict(), model2.state_dict())
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s1["param_groups"] == s2["param_groups"]
    for k in s1["state"]:
        assert torch.equal(s1["state"][k]["momentum_buffer"], s2["state"][k]["momentum_buffer"])


def test_without_resume_only_weights_are_loaded(tmp_path):
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_a_bit(model, opt)
    ck = DetectionCheckpointer(model, str(tmp_path), optimizer=opt)
    ck.save("weights")
    model2 = _model(1)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.5)
    ck2 = DetectionCheckpointer(model2, str(tmp_path / "elsewhere"), optimizer=opt2)
    # no last_checkpoint in "elsewhere": loads the weights only
    extra = ck2.resume_or_load(str(tmp_path / "weights.pth"), resume=True)
    assert "optimizer" in extra  # not applied, handed back
    assert opt2.param_groups[0]["lr"] == 0.5
    assert _same_state(model.state_dict(), model2.state_dict())


def test_failure_mid_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    model = _model()
    ck = DetectionCheckpointer(model, str(tmp_path))
    ck.save("model_final", iteration=1)
    before = (tmp_path / "model_final.pth").read_bytes()

    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"PARTIAL")  # bytes reach the temporary file, then the "disk" fails
        raise OSError("disk full")

    with torch.no_grad():
        model[0].weight.add_(1.0)
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        ck.save("model_final", iteration=2)
    monkeypatch.setattr(torch, "save", real_save)

    assert (tmp_path / "model_final.pth").read_bytes() == before
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_final.pth"]  # no temp left
    extra = DetectionCheckpointer(_model(), str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 1


def test_kill_between_write_and_rename_leaves_target_whole(tmp_path, monkeypatch):
    ck = DetectionCheckpointer(_model(), str(tmp_path))
    ck.save("model_0000001", iteration=1)
    before = (tmp_path / "model_0000001.pth").read_bytes()

    def no_replace(src, dst):
        raise KeyboardInterrupt  # killed just before the rename

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        ck.save("model_0000001", iteration=2)
    monkeypatch.undo()
    assert (tmp_path / "model_0000001.pth").read_bytes() == before
    assert not [f for f in os.listdir(tmp_path) if f.endswith(".tmp")]


@pytest.mark.parametrize(
    "content", [b"", b"not a checkpoint", None], ids=["empty", "garbage", "truncated"]
)
def test_corrupt_checkpoint_error_names_file(tmp_path, content):
    path = tmp_path / "model_final.pth"
    if content is None:
        torch.save({"model": _model().state_dict()}, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="model_final.pth"):
        DetectionCheckpointer(_model()).load(str(path))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"model": _model().state_dict(), "obj": _Unsafe()}, path)
    with pytest.raises(CheckpointError, match="evil.pth.*weights_only"):
        DetectionCheckpointer(_model()).load(str(path))


class _Unsafe:
    pass


def test_missing_checkpoint_error_names_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        DetectionCheckpointer(_model()).load(str(tmp_path / "nope.pth"))


def test_partial_load_records_missing_unexpected_and_shapes(tmp_path):
    src = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))
    path = tmp_path / "src.pth"
    torch.save({"model": {**src.state_dict(), "extra.weight": torch.zeros(1)}}, path)
    dst = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5), nn.Linear(5, 1))
    ck = DetectionCheckpointer(dst)
    ck.load(str(path))
    inc = ck.incompatible_keys
    assert torch.equal(dst[0].weight, src[0].weight)
    assert {k for k, _, _ in inc.incorrect_shapes} == {"1.weight", "1.bias"}
    assert set(inc.missing_keys) == {"1.weight", "1.bias", "2.weight", "2.bias"}
    assert inc.unexpected_keys == ["extra.weight"]


def test_ddp_prefix_and_bare_state_dict(tmp_path):
    src = _model()
    path = tmp_path / "ddp.pth"
    torch.save({f"module.{k}": v for k, v in src.state_dict().items()}, path)  # bare, prefixed
    dst = _model(seed=3)
    ck = DetectionCheckpointer(dst)
    ck.load(str(path))
    assert _same_state(src.state_dict(), dst.state_dict())
    assert not ck.incompatible_keys.missing_keys


def test_save_to_disk_false_and_no_dir(tmp_path):
    DetectionCheckpointer(_model(), str(tmp_path), save_to_disk=False).save("x")
    DetectionCheckpointer(_model(), "").save("x")
    assert os.listdir(tmp_path) == []


def _other_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.BatchNorm1d(8), nn.Linear(8, 1), nn.Linear(1, 1))


def test_checkpoint_of_another_model_is_an_error_for_evaluation(tmp_path):
    DetectionCheckpointer(_model(), str(tmp_path)).save("other")
    path = str(tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other\.pth.*missing.*another shape") as e:
        DetectionCheckpointer(_other_model(), strict=True).load(path)
    # 2.bias (1,) and BatchNorm's num_batches_tracked happen to match; nothing else does
    assert "2 of the model's 11 tensors loaded" in str(e.value)
    # the same model's own checkpoint passes the strict check
    DetectionCheckpointer(_model(seed=3), strict=True).load(path)


def test_partial_load_for_training_logs_one_summary_line(tmp_path, caplog):
    DetectionCheckpointer(_model(), str(tmp_path)).save("other")
    ck = DetectionCheckpointer(_other_model())
    with caplog.at_level("WARNING", logger="det3d.checkpoint.detection_checkpoint"):
        ck.load(str(tmp_path / "other.pth"))
    lines = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(lines) == 1, lines
    assert "other.pth" in lines[0] and "of another shape" in lines[0] and "missing" in lines[0]
    assert {k for k, _, _ in ck.incompatible_keys.incorrect_shapes} == {
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "2.weight"
    }


class _RunsCode:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["pkl", "pth"])
def test_pickled_code_is_reported_as_untrusted_and_never_run(tmp_path, fmt):
    import pickle

    marker = tmp_path / "was_run"
    path = str(tmp_path / f"evil.{fmt}")
    payload = {"model": _model().state_dict(), "extra": _RunsCode(marker)}
    if fmt == "pkl":  # a Detectron2-style pickle of numpy arrays, plus the code
        payload["model"] = {k: v.numpy() for k, v in payload["model"].items()}
        with open(path, "wb") as f:
            pickle.dump(payload, f)
    else:
        torch.save(payload, path)
    pattern = r"evil\.%s.*untrusted or of another format" % fmt
    with pytest.raises(CheckpointError, match=pattern) as e:
        DetectionCheckpointer(_model()).load(path)
    assert "system" in str(e.value) and "corrupt" not in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4])
def test_detectron2_pkl_of_numpy_arrays_loads(tmp_path, protocol):
    import pickle

    src = _model(seed=5)
    arrays = {k: v.numpy().copy() for k, v in src.state_dict().items()}
    path = str(tmp_path / "model_final_abc.pkl")
    with open(path, "wb") as f:  # the model zoo's format
        pickle.dump({"model": arrays, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    dst = _model(seed=6)
    extra = DetectionCheckpointer(dst, strict=True).load(path)
    assert _same_state(src.state_dict(), dst.state_dict())
    assert extra["__author__"] == "Detectron2 Model Zoo"
    # Caffe2-style blobs too (momentum entries dropped)
    with open(path, "wb") as f:
        pickle.dump({"blobs": {**arrays, "0.weight_momentum": arrays["0.weight"]}}, f, protocol=2)
    DetectionCheckpointer(_model(seed=7), strict=True).load(path)


def test_garbage_is_corrupt_not_untrusted(tmp_path):
    path = tmp_path / "noise.pth"
    path.write_bytes(bytes(range(7, 250)) * 4)
    with pytest.raises(CheckpointError, match=r"noise\.pth.*corrupt or not a checkpoint"):
        DetectionCheckpointer(_model()).load(str(path))
