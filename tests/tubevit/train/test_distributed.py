"""DDP on 2 CPU ranks (gloo, torchrun) against a single process with the same global batch; helpers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from tubevit.train import distributed
from tubevit.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

WORKER = Path(__file__).with_name("worker.py")
PYTHON = Path(sys.executable)
TORCHRUN = PYTHON.with_name("torchrun")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_two_gloo_ranks_match_each_other_and_a_single_process(tmp_path):
    common = ["--steps", "6", "--batch", "8", "--accum", "2"]
    ddp = [
        str(TORCHRUN),
        "--nnodes", "1", "--node_rank", "0", "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), "--nproc_per_node", "2",
        str(WORKER), "--out", str(tmp_path / "ddp"), *common,
        "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "3",
    ]  # fmt: skip
    single = [str(PYTHON), str(WORKER), "--out", str(tmp_path / "single"), *common]
    for cmd in (ddp, single):
        done = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=110)
        assert done.returncode == 0, done.stderr[-3000:]

    rank0, rank1 = load(tmp_path / "ddp.rank0.pt"), load(tmp_path / "ddp.rank1.pt")
    reference = load(tmp_path / "single.rank0.pt")
    assert rank0.keys() == rank1.keys() == reference.keys()
    for key in rank0:
        assert torch.equal(rank0[key], rank1[key]), key
        torch.testing.assert_close(rank0[key], reference[key], rtol=1e-4, atol=1e-4, msg=key)
    # the tolerance is meaningful: training moved the weights much further than it
    torch.manual_seed(0)
    from tubevit.model.tubevit import create_model

    from .helpers import NUM_CLASSES

    init = create_model("nano", "embedded", NUM_CLASSES).state_dict()
    moved = max((reference[k] - init[k]).abs().max().item() for k in reference)
    assert moved > 1e-2
    # image steps left the video-only tubes without gradients on some steps: DDP coped (find_unused_parameters)
    ckpt = tmp_path / "ckpt" / CHECKPOINT_NAME
    state = load_checkpoint(ckpt, config_hash="worker", world_size=2)
    assert state["step"] == 6 and len(state["rng"]) == 2 and state["world_size"] == 2
    assert all(torch.equal(state["model"][k], rank0[k]) for k in rank0)
    assert not [k for k in state["model"] if "pos" in k]  # the fixed position embedding is never stored
    with pytest.raises(CheckpointError, match="written by 2 ranks, resumed with 1"):
        load_checkpoint(ckpt, config_hash="worker", world_size=1)


def test_single_process_helpers():
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce_sum(t), t) and distributed.all_reduce_sum(t) is not t
    assert torch.equal(distributed.all_reduce_mean(t), t)
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    model = nn.Linear(2, 2)
    assert distributed.wrap_ddp(model, torch.device("cpu")) is model
    assert distributed.unwrap(model) is model
    distributed.barrier()


def test_init_distributed_without_torchrun(monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    info = distributed.init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.device, info.is_main) == (
        0,
        1,
        0,
        torch.device("cpu"),
        True,
    )
    assert not distributed.is_distributed()


def test_resolve_device():
    assert distributed.resolve_device("cpu") == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert distributed.resolve_device("auto", 1) == expected
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match=r"device 'cuda' was requested but torch\.cuda\.is_available"):
            distributed.resolve_device("cuda")


def test_unwrap_compiled_module():
    model = nn.Linear(2, 2)
    assert distributed.unwrap(torch.compile(model)) is model
