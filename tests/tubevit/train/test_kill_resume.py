"""SIGKILL a training process after a checkpoint exists, resume it: the final weights equal an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tubevit.train.checkpoint import CHECKPOINT_NAME, load_checkpoint

WORKER = Path(__file__).with_name("worker.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
STEPS = 10


def worker(out: Path, *extra: str) -> list[str]:
    # dropout, drop path and MixUp make the result depend on every RNG the checkpoint restores
    return [
        sys.executable, str(WORKER), "--out", str(out), "--steps", str(STEPS), "--batch", "4",
        "--accum", "2", "--dropout", "0.2", "--mixup", "0.4", *extra,
    ]  # fmt: skip


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    resumable = ("--checkpoint-dir", str(ckpt_dir), "--checkpoint-every", "3")
    reference = subprocess.Popen(worker(tmp_path / "reference"), env=ENV, stderr=subprocess.PIPE, text=True)
    victim = subprocess.Popen(
        worker(tmp_path / "run", *resumable, "--sleep", "0.4"), env=ENV, stderr=subprocess.PIPE, text=True
    )
    progress = tmp_path / "run.progress"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and victim.poll() is None:
        if (
            (ckpt_dir / CHECKPOINT_NAME).exists()
            and progress.exists()
            and int(progress.read_text() or 0) >= 4
        ):
            break
        time.sleep(0.05)
    assert victim.poll() is None, f"the run ended before it could be killed: {victim.stderr.read()[-2000:]}"
    os.kill(victim.pid, signal.SIGKILL)
    assert victim.wait(timeout=30) == -signal.SIGKILL
    killed_at = int(progress.read_text())
    state = load_checkpoint(ckpt_dir / CHECKPOINT_NAME, config_hash="worker")
    assert (
        3 <= state["step"] < STEPS and state["step"] <= killed_at < STEPS
    )  # killed mid-run, after a checkpoint
    assert not (tmp_path / "run.rank0.pt").exists()

    resumed = subprocess.run(
        worker(tmp_path / "run", *resumable), env=ENV, capture_output=True, text=True, timeout=90
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reference.wait(timeout=90) == 0, reference.stderr.read()[-3000:]

    final = torch.load(tmp_path / "run.rank0.pt", weights_only=True)
    expected = torch.load(tmp_path / "reference.rank0.pt", weights_only=True)
    assert final.keys() == expected.keys()
    for key in expected:
        assert torch.equal(final[key], expected[key]), key
    assert load_checkpoint(ckpt_dir / CHECKPOINT_NAME, config_hash="worker")["step"] == STEPS
    assert sorted(p.name for p in ckpt_dir.iterdir()) == [CHECKPOINT_NAME]
