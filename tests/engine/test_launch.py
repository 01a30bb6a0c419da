"""Multi-process training on CPU (gloo), as ``launch`` runs it; and launch under torchrun."""

import os

import torch
import torch.distributed as dist
from _engine_test_utils import ListLoader, make_dataset
from torch import nn

from det3d.config import get_cfg
from det3d.engine import DefaultTrainer, launch
from det3d.utils import comm


class _NoBNModel(nn.Module):
    """Linear model without BatchNorm: every parameter and buffer is kept in sync by DDP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(comm.get_rank() + 100)  # different init per rank: DDP must broadcast
        self.linear = nn.Linear(4, 1)

    def forward(self, batch):
        x = torch.stack([d["x"] for d in batch])
        y = torch.stack([d["y"] for d in batch])
        return {"loss_mse": ((self.linear(x) - y) ** 2).mean()}


class _DDPTrainer(DefaultTrainer):
    @classmethod
    def build_model(cls, cfg):
        return _NoBNModel()

    @classmethod
    def build_train_loader(cls, cfg):
        # Each rank sees its own shard, as a distributed sampler would give it.
        data = make_dataset(16, seed=0)[comm.get_rank() :: comm.get_world_size()]
        return ListLoader(data, batch_size=2)


def _worker(output_dir):
    assert comm.get_world_size() == 2 and comm.get_local_rank() == comm.get_rank()
    assert dist.get_backend() == "gloo"
    # communication helpers
    assert comm.all_gather(comm.get_rank()) == [0, 1]
    gathered = comm.gather({"r": comm.get_rank()})
    assert gathered == ([{"r": 0}, {"r": 1}] if comm.is_main_process() else [])
    seed = comm.shared_random_seed()
    assert len(set(comm.all_gather(seed))) == 1
    reduced = comm.reduce_dict({"a": torch.tensor(float(comm.get_rank() + 1))})
    if comm.is_main_process():
        assert reduced["a"].item() == 1.5

    cfg = get_cfg()
    cfg.OUTPUT_DIR = output_dir
    cfg.SOLVER.BASE_LR = 0.01
    cfg.SOLVER.MAX_ITER = 6
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.DATASETS.TEST = ()
    trainer = _DDPTrainer(cfg)
    assert isinstance(trainer.model, nn.parallel.DistributedDataParallel)
    trainer.resume_or_load(resume=False)
    trainer.train()
    state = {k: v.detach().clone() for k, v in trainer.model.module.state_dict().items()}
    torch.save(state, os.path.join(output_dir, f"rank{comm.get_rank()}.pth"))


def test_launch_two_cpu_processes_ddp(tmp_path):
    launch(_worker, 2, num_machines=1, machine_rank=0, dist_url="auto", args=(str(tmp_path),))
    w0 = torch.load(tmp_path / "rank0.pth", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pth", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        assert torch.equal(w0[k], w1[k]), k
    # Training happened and only rank 0 wrote checkpoints / metrics.
    assert (tmp_path / "model_final.pth").is_file() and (tmp_path / "metrics.json").is_file()
    saved = torch.load(tmp_path / "model_final.pth", weights_only=True)["model"]
    assert torch.equal(saved["linear.weight"], w0["linear.weight"])
    assert not (tmp_path / "metrics.json.rank1").exists()


def test_launch_single_process_calls_directly():
    seen = []
    launch(lambda x: seen.append(x), 1, args=(3,))
    assert seen == [3] and not dist.is_initialized()


def test_launch_under_torchrun_env_does_not_spawn(monkeypatch):
    from det3d.engine.launch import find_free_port

    env = {
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "LOCAL_WORLD_SIZE": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(find_free_port()),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    seen = []
    monkeypatch.setattr(comm, "_LOCAL_PROCESS_GROUP", None)
    comm.create_local_process_group.cache_clear()
    try:
        launch(lambda: seen.append((os.getpid(), dist.is_initialized(), comm.get_world_size())), 4)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        comm.create_local_process_group.cache_clear()
    assert seen == [(os.getpid(), True, 1)]
