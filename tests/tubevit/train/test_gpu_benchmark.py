"""benchmarks/gpu.py cannot rot: its smoke mode runs every row's code path on the CPU (not timed), and
without CUDA it records every row as not measured."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[3]
SCRIPT = ROOT / "benchmarks" / "gpu.py"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *args], env=env or ENV, capture_output=True, text=True, timeout=280
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_smoke_measures_every_row(tmp_path):
    out = tmp_path / "gpu.json"
    done = run("--smoke", "--out", str(out))
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [(r["row"], r["name"], r["frames"], r["mode"], r.get("augment_on")) for r in rows] == [
        ("a", "bare", 16, "eager", None),
        ("a", "bare", 16, "compiled", None),
        ("a", "bare", 8, "eager", None),
        ("b", "train", 16, "eager", "device"),
        ("b", "train", 16, "eager", "cpu"),
        ("b", "train", 8, "eager", "device"),
        ("b", "train", 8, "eager", "cpu"),
        ("c", "timm", 16, "eager", None),
        ("c", "timm", 16, "compiled", None),
    ]
    assert all(r["status"] == "measured" and r["clips_per_s"] > 0 and r["mfu"] > 0 for r in rows), rows
    # FLOPs are counted once per model and shape: the loop rows use the bare rows' count
    by = {(r["name"], r["frames"], r["mode"], r.get("augment_on")): r for r in rows}
    flops = by[("bare", 16, "eager", None)]["train_gflops_per_clip"]
    assert by[("train", 16, "eager", "device")]["train_gflops_per_clip"] == flops
    assert by[("bare", 8, "eager", None)]["train_gflops_per_clip"] < flops  # fewer frames, fewer tokens
    # timm runs at TubeViT's token count; every non-bare row is compared with the bare eager one
    assert by[("timm", 16, "eager", None)]["tokens"] == by[("bare", 16, "eager", None)]["tokens"] > 0
    for r in rows:
        if r["name"] != "bare":
            ref = by[("bare", r["frames"], "eager", None)]["clips_per_s"]
            assert r["vs_bare_eager"] == pytest.approx(r["clips_per_s"] / ref, abs=1e-3)
        assert r["mfu"] == pytest.approx(
            r["clips_per_s"] * r["train_gflops_per_clip"] * 1e9 / 989e12, rel=1e-2
        )
    assert result["setup"]["smoke"] is True and "timm-vit" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available: the rows would be measured")
def test_without_cuda_every_row_is_not_measured_and_copied_to_out(tmp_path):
    out = tmp_path / "results" / "gpu.json"
    copy = tmp_path / "device-out"
    copy.mkdir()
    run("--out", str(out), env={**ENV, "OUT": str(copy)})
    result = json.loads(out.read_text())
    assert len(result["rows"]) == 9
    for row in result["rows"]:
        assert row["status"] == "not measured: no CUDA device (torch.cuda.is_available() is False)"
        assert "clips_per_s" not in row
    assert json.loads((copy / "gpu.json").read_text()) == result
