import json
import os

import pytest

from det3d.utils.file_io import atomic_write, write_json_atomic


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "sub" / "a.json"
    write_json_atomic(str(path), {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    write_json_atomic(str(path), {"x": 2})
    assert json.loads(path.read_text()) == {"x": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.json"]  # no temporary files left


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"old")

    def half_then_fail(f):
        f.write(b"new but incomplete")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(str(path), half_then_fail)
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_read_json_names_the_file_and_what_it_is(tmp_path):
    from det3d.utils.file_io import read_json

    good = tmp_path / "a.json"
    good.write_text('{"k": [1, 2]}')
    assert read_json(str(good)) == {"k": [1, 2]}
    with pytest.raises(FileNotFoundError, match=r"missing\.json: no such class map file"):
        read_json(str(tmp_path / "missing.json"), "class map")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not valid JSON"):
        read_json(str(bad))


def test_keep_earlier_keeps_a_file_from_before_and_replaces_its_own(tmp_path):
    from det3d.evaluation import SEGEvaluator  # noqa: F401  (its results use keep_earlier)

    path = tmp_path / "inference" / "seg_results.json"
    path.parent.mkdir()
    path.write_text('{"SEG": 0.9}')  # an earlier run's results
    write_json_atomic(str(path), {"SEG": 0.1}, keep_earlier=True)
    assert json.loads(path.read_text()) == {"SEG": 0.1}
    kept = path.parent / "seg_results.1.json"
    assert json.loads(kept.read_text()) == {"SEG": 0.9}  # byte for byte what was there
    write_json_atomic(str(path), {"SEG": 0.2}, keep_earlier=True)  # this process's own: replaced
    assert json.loads(path.read_text()) == {"SEG": 0.2}
    names = sorted(p.name for p in path.parent.iterdir())
    assert names == ["seg_results.1.json", "seg_results.json"]


def test_keep_aside_picks_the_first_free_number(tmp_path):
    from det3d.utils.file_io import keep_aside

    (tmp_path / "c.yaml").write_text("new")
    (tmp_path / "c.1.yaml").write_text("one")
    assert keep_aside(str(tmp_path / "c.yaml")) == str(tmp_path / "c.2.yaml")
    assert (tmp_path / "c.2.yaml").read_text() == "new" and not (tmp_path / "c.yaml").exists()
    assert keep_aside(str(tmp_path / "absent.json")) is None


class _FullDisk:
    """A file on a full disk: writes fail with ENOSPC after a few bytes."""

    def __init__(self, f, room=64):
        self.f, self.room = f, room

    def write(self, data):
        import errno
        import os

        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.f.write(data)

    def flush(self):
        self.f.flush()


def test_full_disk_while_saving_a_checkpoint_names_the_file(tmp_path):
    import torch

    path = tmp_path / "model_final.pth"
    path.write_bytes(b"previous checkpoint")
    # torch's writer turns the ENOSPC of the file into "RuntimeError: ... unexpected pos"
    with pytest.raises(OSError, match=r"No space left on device: '.*model_final\.pth'"):
        atomic_write(str(path), lambda f: torch.save({"w": torch.zeros(4096)}, _FullDisk(f)))
    assert path.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["model_final.pth"]
    with pytest.raises(OSError, match=r"No space left on device: '.*metrics\.json'"):
        atomic_write(str(tmp_path / "metrics.json"), lambda f: _FullDisk(f).write(b"x" * 100))


def test_full_disk_on_a_real_filesystem_names_the_file(tmp_path):
    import subprocess

    import torch

    from det3d.checkpoint import DetectionCheckpointer

    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        model = torch.nn.Linear(200, 200)  # 160 KB: more than the disk holds
        with pytest.raises(OSError, match=r"No space left on device: '.*model_final\.pth'"):
            DetectionCheckpointer(model, str(small)).save("model_final")
        assert os.listdir(small) == []  # no half-written file, no last_checkpoint tag
    finally:
        subprocess.run(["umount", str(small)])


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_atomic_write_gives_the_users_usual_permissions(tmp_path, umask):
    old = os.umask(umask)
    try:
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # how any other output file is created
        atomic = tmp_path / "atomic.json"
        write_json_atomic(str(atomic), {"x": 1})
    finally:
        os.umask(old)
    assert (atomic.stat().st_mode & 0o777) == (plain.stat().st_mode & 0o777) == 0o666 & ~umask
