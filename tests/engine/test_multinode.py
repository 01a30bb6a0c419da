"""
Multi-node training through the real command line: two ``tools/train_net.py`` processes, one per
"machine" (``--num-machines 2 --machine-rank 0/1 --dist-url tcp://127.0.0.1:PORT``, gloo), train
the instant config to the same weights as one machine running both processes; a machine that
never joins ends the other with a timeout error naming the URL instead of a hang.
"""

import os
import subprocess
import sys
import time

import pytest
import torch

from det3d.engine.launch import find_free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
INSTANT = os.path.join(ROOT, "configs", "quick_schedules", "mask_rcnn_R18_FPN_3d_instant_test.yaml")


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    from det3d.data import DatasetCatalog, set_synthetic_root

    root = str(tmp_path_factory.mktemp("synthetic"))
    set_synthetic_root(root)  # written once here: the processes only read it
    try:
        DatasetCatalog.get("synthetic_tiny_train")
    finally:
        set_synthetic_root(None)
    return root


def _command(output_dir, synthetic_root, *flags):
    return [sys.executable, TRAIN_NET, *flags, "--config-file", INSTANT,
            "OUTPUT_DIR", output_dir, "SYNTHETIC.ROOT", synthetic_root,
            "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100",
            "DATASETS.TEST", "()"]  # fmt: skip


def _env():
    # one thread per process: the same float reductions in every layout of the processes
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def _final_weights(output_dir):
    return torch.load(os.path.join(output_dir, "model_final.pth"), weights_only=True)["model"]


def test_two_machines_train_the_same_weights_as_one(tmp_path, synthetic_root):
    url = f"tcp://127.0.0.1:{find_free_port()}"
    machines = [
        subprocess.Popen(
            _command(str(tmp_path / f"machine{rank}"), synthetic_root, "--num-machines", "2",
                     "--machine-rank", str(rank), "--dist-url", url, "--dist-join-timeout", "120"),
            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    outputs = [m.communicate(timeout=600)[0] for m in machines]
    for rank, (m, out) in enumerate(zip(machines, outputs)):
        assert m.returncode == 0, f"machine {rank}:\n{out[-3000:]}"
    assert "World size: 2" in outputs[0]
    # only the main process writes checkpoints
    assert not os.path.exists(tmp_path / "machine1" / "model_final.pth")

    one = subprocess.run(_command(str(tmp_path / "one"), synthetic_root, "--num-gpus", "2"),
                         env=_env(), capture_output=True, text=True, timeout=600)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two, single = _final_weights(tmp_path / "machine0"), _final_weights(tmp_path / "one")
    assert two.keys() == single.keys()
    for k in two:
        assert torch.equal(two[k], single[k]), k
    start = torch.load(os.path.join(tmp_path / "one", "model_final.pth"), weights_only=True)
    assert start["iteration"] == 1  # both trained (iterations 0 and 1)


def test_a_machine_that_never_joins_ends_the_other_with_an_error_naming_the_url(
    tmp_path, synthetic_root
):
    url = f"tcp://127.0.0.1:{find_free_port()}"
    t0 = time.monotonic()
    alone = subprocess.run(
        _command(str(tmp_path / "alone"), synthetic_root, "--num-machines", "2", "--machine-rank",
                 "0", "--dist-url", url, "--dist-join-timeout", "3"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert alone.returncode != 0
    assert f"did not all join at --dist-url {url} within 3 s" in alone.stderr, alone.stderr[-3000:]
    assert "1 of 2 joined" in alone.stderr
    assert time.monotonic() - t0 < 120
    # a worker whose main machine never starts: the same error, from the other side
    worker = subprocess.run(
        _command(str(tmp_path / "worker"), synthetic_root, "--num-machines", "2", "--machine-rank",
                 "1", "--dist-url", url, "--dist-join-timeout", "3"),
        env=_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert worker.returncode != 0
    assert f"--dist-url {url}" in worker.stderr, worker.stderr[-3000:]
