"""The pretrain stage on micro shards (8x64^2 clips, 2 steps): outputs, their contents, resume, errors."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import pytest
import torch

from pipelines import pretrain, training
from tests.fixtures.training_data import PARAMS, micro_params, micro_pretrained, micro_shards
from tubevit.model.tubes import get_tube_set, token_counts
from tubevit.train.loop import Callback, NonFiniteLossError


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "training-micro"


@pytest.fixture(scope="session")
def shards(base) -> Path:
    return micro_shards(base)


class Interrupted(Exception):
    pass


class Steps(Callback):
    def __init__(self):
        self.steps, self.metrics = [], []

    def on_step(self, step, metrics):
        self.steps.append(step)
        self.metrics.append(dict(metrics))


def test_outputs_and_contents(base, shards, tmp_path):
    out = micro_pretrained(base)
    index = {
        ds: json.loads((shards / ds / "train" / "index.json").read_text()) for ds in ("kinetics", "imagenet")
    }
    k_kinetics, k_imagenet = len(index["kinetics"]["classes"]), len(index["imagenet"]["classes"])
    assert k_imagenet == 6  # the micro Kinetics-like set holds the classes its 8 clips drew
    state = torch.load(out / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("pos" in k and "embed" in k for k in state), "the fixed position embedding is not saved"
    assert set(k.split(".")[1] for k in state if k.startswith("heads.")) == {"kinetics", "imagenet"}
    assert state["heads.kinetics.weight"].shape == (k_kinetics, 64)  # nano width 64
    assert state["heads.imagenet.weight"].shape == (6, 64)

    config = json.loads((out / "config.json").read_text())
    assert config["heads"] == {"kinetics": k_kinetics, "imagenet": 6}
    assert config["model"]["variant"] == "nano"
    assert config["model"]["tubes"] == [s.to_dict() for s in get_tube_set("embedded")]
    assert config["inputs"] == {"kinetics": {"frames": 8, "size": 64}, "imagenet": {"frames": 1, "size": 64}}
    assert config["tokens"]["kinetics"] == sum(token_counts(get_tube_set("embedded"), 8, 64, 64)) == 96
    assert config["tokens"]["imagenet"] == 64
    assert config["classes"]["kinetics"] == index["kinetics"]["classes"] and config["multilabel"] == {
        "kinetics": False,
        "imagenet": False,
    }
    assert config["parameters"] == sum(v.numel() for v in state.values())

    bundle = training.load_model(out)  # rebuilds and loads strictly
    x = torch.zeros(2, 3, 8, 64, 64)
    assert bundle.model.eval()(x, "kinetics").shape == (2, k_kinetics)
    assert bundle.model(torch.zeros(2, 3, 1, 64, 64), "imagenet").shape == (2, 6)


def test_logs_timing_and_resume(shards, tmp_path, caplog):
    params = micro_params()
    ckpt, live, timing = tmp_path / "ckpt", tmp_path / "live", tmp_path / "timing.json"
    one = params
    seen = Steps()
    with caplog.at_level("INFO", logger="pipelines.pretrain"):
        summary = pretrain.run(
            one, shards, tmp_path / "a", ckpt, live, timing, callbacks=[seen], progress=False
        )
    assert "estimated time for 2 steps" in caplog.text
    assert seen.steps == [1, 2] and summary["steps"] == 2 and summary["start_step"] == 0
    assert {m["dataset"] for m in seen.metrics} <= {"kinetics", "imagenet"}
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 for m in seen.metrics)

    # dvclive: per-step loss, lr and clips/s, and a summary; nothing written outside the folder
    loss = (live / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    assert loss[0].split("\t") == ["step", "loss"] and [r.split("\t")[0] for r in loss[1:]] == ["1", "2"]
    assert float(loss[2].split("\t")[1]) == pytest.approx(seen.metrics[1]["loss"], rel=1e-5)
    for name in ("lr", "clips_per_s"):
        assert len((live / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines()) == 3
    assert json.loads((live / "metrics.json").read_text())["step"] == 2
    assert not (live / "dvc.yaml").exists()

    record = json.loads(timing.read_text())
    assert record["stage"] == "pretrain" and record["steps_run"] == 2 and record["clips_per_s"] > 0

    # resume: the same params and a completed checkpoint -> no step is run again, equal weights
    again = Steps()
    summary2 = pretrain.run(one, shards, tmp_path / "b", ckpt, live, None, callbacks=[again], progress=False)
    assert again.steps == [] and summary2["start_step"] == 2
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a checkpoint written under other params is set aside, never resumed nor deleted
    assert (
        training.set_aside_mismatched_checkpoint(ckpt, pretrain.run_config_hash(one, {}))
        == ckpt / "checkpoint.stale.pt"
    )
    assert not (ckpt / "checkpoint.pt").exists() and (ckpt / "checkpoint.stale.pt").is_file()


def test_interrupted_run_resumes_to_the_same_weights(base, shards, tmp_path):
    """Stopping after step 1 and resuming gives the weights of the uninterrupted 2-step run."""
    params = micro_params()
    full = micro_pretrained(base)  # the same params, uninterrupted

    class Stop(Callback):
        def on_checkpoint(self, step, path):
            raise Interrupted  # the checkpoint of step 1 is on disk

    with pytest.raises(Interrupted):
        pretrain.run(params, shards, tmp_path / "x", tmp_path / "ck", callbacks=[Stop()], progress=False)
    assert torch.load(tmp_path / "ck" / "checkpoint.pt", weights_only=True)["step"] == 1
    seen = Steps()
    summary = pretrain.run(
        params, shards, tmp_path / "resumed", tmp_path / "ck", callbacks=[seen], progress=False
    )
    assert summary["start_step"] == 1 and seen.steps == [2]
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_non_finite_loss_stops_with_the_step(shards, tmp_path):
    params = micro_params()
    bad = dataclasses.replace(
        params,
        pretrain=dataclasses.replace(
            params.pretrain, optim=dataclasses.replace(params.pretrain.optim, lr=1e30, clip_grad=0.0)
        ),
    )
    with pytest.raises(NonFiniteLossError, match=r"^step 1: loss is (nan|inf)"):
        pretrain.run(bad, shards, tmp_path / "m", tmp_path / "ck", progress=False)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_main_bad_params_one_line(tmp_path, capsys):
    bad = tmp_path / "params.yaml"
    bad.write_text(
        PARAMS.read_text().replace(
            "steps: 2\n  checkpoint_every: 1\n  device: cpu",
            "steps: -1\n  checkpoint_every: 1\n  device: cpu",
            1,
        )
    )
    with pytest.raises(SystemExit) as exc:
        pretrain.main(
            ["--shards", "s", "--out", "o", "--checkpoints", "c", "--params", str(bad), "--no-flow"]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pretrain.steps: must be >= 1, got -1" in err[0]


def test_torchrun_command_is_one_subprocess():
    cmd = training.torchrun_command("pipelines.pretrain", ["--shards", "s", "--params", "p.yaml"], 2)
    assert cmd[:6] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
    ]
    assert cmd[6:] == ["pipelines.pretrain", "--shards", "s", "--params", "p.yaml", "--no-flow"]


def test_config_hash_ignores_execution_keys_only():
    """Changing device, compile, checkpoint/eval cadence, nproc or a loader's workers/cache keeps a
    checkpoint; changing what is learned (lr, a loader's crop size) discards it."""
    params = micro_params()
    base = pretrain.run_config_hash(params, {})
    pcfg = params.pretrain
    loader = {
        name: dataclasses.replace(lc, workers=lc.workers + 2, cache_mb=lc.cache_mb + 64)
        for name, lc in pcfg.loader.items()
    }
    execution = dataclasses.replace(
        pcfg,
        device="cpu" if pcfg.device != "cpu" else "auto",
        compile=not pcfg.compile,
        checkpoint_every=pcfg.checkpoint_every + 7,
        eval_every=pcfg.eval_every + 3,
        nproc=pcfg.nproc + 1,
        loader=loader,
    )
    assert pretrain.run_config_hash(dataclasses.replace(params, pretrain=execution), {}) == base
    lr = dataclasses.replace(pcfg, optim=dataclasses.replace(pcfg.optim, lr=pcfg.optim.lr * 2))
    assert pretrain.run_config_hash(dataclasses.replace(params, pretrain=lr), {}) != base
    size = {n: dataclasses.replace(lc, size=lc.size // 2) for n, lc in pcfg.loader.items()}
    assert (
        pretrain.run_config_hash(
            dataclasses.replace(params, pretrain=dataclasses.replace(pcfg, loader=size)), {}
        )
        != base
    )
    hashed = training.hashable_config(pcfg)
    assert not {"device", "compile", "checkpoint_every", "eval_every", "nproc"} & set(hashed)
    assert all(
        "workers" not in lc and "cache_mb" not in lc and "frames" in lc for lc in hashed["loader"].values()
    )


def test_shards_url_is_kept_as_text_and_read_through_fsspec(shards, tmp_path):
    """``--shards s3://bucket/shards`` stays a URL (pathlib would fold ``//``); a memory:// copy of the
    micro shards trains through fsspec like the local folder, to the same weights."""
    import fsspec

    from tubevit.data.shards import register_fsspec_handlers

    args = pretrain.build_parser().parse_args(
        ["--shards", "s3://bucket/shards", "--out", "o", "--checkpoints", "c"]
    )
    assert args.shards == "s3://bucket/shards"
    assert pretrain._join(args.shards, "kinetics") == "s3://bucket/shards/kinetics"
    register_fsspec_handlers(["memory"])
    fs = fsspec.filesystem("memory")
    for path in shards.rglob("*"):
        if path.is_file():
            fs.pipe(f"/tubevit-test/{path.relative_to(shards).as_posix()}", path.read_bytes())
    params = micro_params()
    pretrain.run(params, "memory://tubevit-test", tmp_path / "url", None, None, None, progress=False)
    pretrain.run(params, shards, tmp_path / "local", None, None, None, progress=False)
    a = torch.load(tmp_path / "url" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
