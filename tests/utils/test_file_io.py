import json

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
