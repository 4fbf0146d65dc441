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
    assert config["inputs"] == {  # the head's input, and how `tubevit predict` reads a new video for it
        "kinetics": {"frames": 8, "size": 64, "fps": 15.0, "short_side": 64},
        "imagenet": {"frames": 1, "size": 64, "fps": 15.0, "short_side": 64},
    }
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
    assert training.join_url(args.shards, "kinetics") == "s3://bucket/shards/kinetics"
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


# ---- issue 9 item 1: init_from and image-to-video scaling through the stage -------------------------------


class StartState(training.ModelCallback):
    """The model's weights and trainable set right before the first step (the stage's on_model hook)."""

    def __init__(self):
        self.state: dict[str, torch.Tensor] = {}
        self.frozen: set[str] = set()

    def on_model(self, model):
        self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.frozen = {n for n, p in model.named_parameters() if not p.requires_grad}


def _image_vit(layout: str, width: int = 64, depth: int = 4, heads: int = 4) -> dict[str, torch.Tensor]:
    """A randomly initialised image ViT (8x8 patches of 64^2 images) in timm's or torchvision's layout."""
    torch.manual_seed(123)
    if layout == "timm":
        import timm

        vit = timm.create_model(
            "vit_tiny_patch16_224", pretrained=False, embed_dim=width, depth=depth, num_heads=heads,
            patch_size=8, img_size=64, num_classes=10,
        )  # fmt: skip
    else:
        import torchvision

        vit = torchvision.models.VisionTransformer(
            image_size=64,
            patch_size=8,
            num_layers=depth,
            num_heads=heads,
            hidden_dim=width,
            mlp_dim=4 * width,
        )
    return vit.state_dict()


def _with(params, model=None, **pretrain):
    return dataclasses.replace(
        params,
        model=model or params.model,
        pretrain=dataclasses.replace(params.pretrain, **pretrain),
    )


@pytest.mark.parametrize("layout", ["timm", "torchvision"])
def test_init_from_an_image_vit_file_starts_from_its_weights(shards, tmp_path, layout):
    """``pretrain.init_from`` = a saved image-ViT state dict: the encoder the first step sees is the file's
    (blocks and final norm exactly, the 1x8x8 image tube = the patch embedding), and training moves it."""
    source = _image_vit(layout)
    path = tmp_path / f"{layout}.pth"
    torch.save(source, path)
    start = StartState()
    params = _with(micro_params(), init_from=str(path))
    pretrain.run(params, shards, tmp_path / "m", None, callbacks=[start], progress=False)
    if layout == "timm":
        blocks = {k: v for k, v in source.items() if k.startswith(("blocks.", "norm."))}
        patch_w, patch_b = source["patch_embed.proj.weight"], source["patch_embed.proj.bias"]
        qkv = "blocks.3.attn.qkv.weight"
    else:
        blocks = {
            "norm.weight": source["encoder.ln.weight"],
            "blocks.0.attn.qkv.weight": source[
                "encoder.layers.encoder_layer_0.self_attention.in_proj_weight"
            ],
            "blocks.3.mlp.fc2.weight": source["encoder.layers.encoder_layer_3.mlp.3.weight"],
        }
        patch_w, patch_b = source["conv_proj.weight"], source["conv_proj.bias"]
        qkv = "blocks.0.attn.qkv.weight"
    assert len(blocks) >= 3
    for key, value in blocks.items():
        assert torch.equal(start.state[key], value), key
    image_tube = next(i for i, s in enumerate(get_tube_set("embedded")) if s.kernel == (1, 8, 8))
    assert torch.equal(start.state[f"tokenizer.tubes.{image_tube}.proj.weight"], patch_w.unsqueeze(2))
    assert torch.equal(start.state[f"tokenizer.tubes.{image_tube}.proj.bias"], patch_b)
    assert start.frozen == set()
    trained = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert not torch.equal(trained[qkv], start.state[qkv])  # 2 steps trained from there
    assert (trained[qkv] - start.state[qkv]).abs().max() < 0.01


def test_init_from_a_model_folder_and_errors(base, shards, tmp_path):
    """A TubeViT model folder as ``init_from``: every weight (heads of the same datasets too) starts equal
    to the folder's. A missing path names the key."""
    folder = micro_pretrained(base)
    start = StartState()
    pretrain.run(
        _with(micro_params(), init_from=str(folder)), shards, tmp_path / "m", None, callbacks=[start],
        progress=False,
    )  # fmt: skip
    saved = torch.load(folder / "model.pt", weights_only=True)
    assert start.state.keys() == saved.keys()
    assert all(torch.equal(start.state[k], saved[k]) for k in saved)
    with pytest.raises(FileNotFoundError, match=r"pretrain.init_from: .*nope.pt: no such weights file"):
        pretrain.run(
            _with(micro_params(), init_from=str(tmp_path / "nope.pt")), shards, tmp_path / "x", None,
            progress=False,
        )  # fmt: skip


def test_image_to_video_scaling_through_the_stage(base, shards, tmp_path):
    """An image ViT (tiny width, 12 blocks) + the micro nano model's tubes, s = 10: the stage freezes the
    tubes, their [I; 0] width map and blocks 0-9, adds the gate into block 10, trains the rest (the gate's
    alpha opens), and writes a bundle that reloads with the gate."""
    small = micro_pretrained(base)
    source = _image_vit("timm", width=192, depth=12, heads=3)
    path = tmp_path / "vit_tiny.pth"
    torch.save(source, path)
    params = _with(
        micro_params(),
        model=dataclasses.replace(micro_params().model, variant="tiny"),
        init_from=str(path),
        tubes_from=str(small),
        scale_from_layer=10,
    )
    start = StartState()
    pretrain.run(params, shards, tmp_path / "m", tmp_path / "ck", callbacks=[start], progress=False)

    tubes = {n for n in start.state if n.startswith("tokenizer.")}
    blocks = {n for n in start.state if n.startswith(tuple(f"blocks.{i}." for i in range(10)))}
    assert start.frozen == tubes | blocks | {"tube_proj.weight"}
    assert torch.equal(start.state["tube_proj.weight"], torch.eye(192, 64))
    assert start.state["gate.alpha"].item() == 0.0
    small_state = torch.load(small / "model.pt", weights_only=True)
    assert all(torch.equal(start.state[k], small_state[k]) for k in tubes)
    assert all(torch.equal(start.state[k], source[k]) for k in blocks)

    trained = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(torch.equal(trained[k], start.state[k]) for k in start.frozen)  # frozen stayed
    assert trained["gate.alpha"].item() != 0.0  # the gate learns
    assert not torch.equal(trained["blocks.11.mlp.fc1.weight"], start.state["blocks.11.mlp.fc1.weight"])
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["scaling"] == {"gate_index": 10, "gated": True, "tube_dim": 64}
    assert config["model"]["variant"] == "tiny"
    bundle = training.load_model(tmp_path / "m")
    assert bundle.model.gate_index == 10 and bundle.model.tube_proj.weight.shape == (192, 64)
    x = torch.zeros(2, 3, 8, 64, 64)
    assert bundle.model.eval()(x, "kinetics").shape == (2, config["heads"]["kinetics"])


# ---- issue 8 settings through the shared stage module -----------------------------------------------------


def test_augment_on_is_resolved_for_the_training_device(shards):
    """``augment_on: auto`` becomes ``device`` for a CUDA run and the measured CPU choice for a CPU run
    (``device`` with ``workers: 0``, :data:`CPU_AUTO_CHOICE` with workers); an explicit value is kept."""
    from tubevit.data.augment import CPU_AUTO_CHOICE, CPU_AUTO_CHOICE_NO_WORKERS

    params = micro_params()
    metas = {
        name: training.dataset_meta(training.join_url(shards, name), name, "train", params.dataset(name))
        for name in params.pretrain.datasets
    }
    loaders = dict(params.pretrain.loader)
    loaders["imagenet"] = dataclasses.replace(loaders["imagenet"], augment_on="cpu")
    assert loaders["kinetics"].augment_on == "auto"
    cpu_choice = CPU_AUTO_CHOICE if loaders["kinetics"].workers else CPU_AUTO_CHOICE_NO_WORKERS
    assert CPU_AUTO_CHOICE_NO_WORKERS == "device" and CPU_AUTO_CHOICE == "cpu"
    for device, expected in ((torch.device("cpu"), cpu_choice), (torch.device("cuda"), "device")):
        batches = training.make_batches(
            metas,
            loaders,
            params.pretrain.datasets,
            seed=0,
            accum_steps=1,
            rank=0,
            world_size=1,
            device=device,
        )(0)
        assert batches.loaders["kinetics"].augment_on == expected
        assert batches.loaders["imagenet"].augment_on == "cpu"
    workers = dict(loaders, kinetics=dataclasses.replace(loaders["kinetics"], workers=1))
    batches = training.make_batches(
        metas,
        workers,
        params.pretrain.datasets,
        seed=0,
        accum_steps=1,
        rank=0,
        world_size=1,
        device=torch.device("cpu"),
    )(0)
    assert batches.loaders["kinetics"].augment_on == CPU_AUTO_CHOICE


def test_grad_checkpointing_and_precision_reach_the_loop(shards, tmp_path):
    """``grad_checkpointing`` switches the model's activation checkpointing on (an execution key: the
    checkpoint hash ignores it); ``precision`` is passed to the loop and is part of the hash."""

    class Model(training.ModelCallback):
        def on_model(self, model):
            self.model = model

    seen = Model()
    params = _with(micro_params(), grad_checkpointing=True)
    pretrain.run(params, shards, tmp_path / "m", None, callbacks=[seen], progress=False)
    assert seen.model.grad_checkpointing is True
    base = pretrain.run_config_hash(micro_params(), {})
    assert pretrain.run_config_hash(params, {}) == base
    assert pretrain.run_config_hash(_with(micro_params(), precision="fp32"), {}) != base
    with pytest.raises(ValueError, match="precision"):
        pretrain.run(_with(micro_params(), precision="fp8"), shards, tmp_path / "x", None, progress=False)


def test_main_writes_the_tubes_plot(shards, tmp_path):
    """``--tubes-plot`` (a path from dvc.yaml): a PNG of the trained model's tubes on the kinetics
    training clip (8x64^2: the 8x2x2 tube has no position and is listed as skipped)."""
    from PIL import Image

    from tubevit.viz import canvas_size

    plot = tmp_path / "plots" / "tubes.png"
    argv = ["--shards", str(shards), "--out", str(tmp_path / "m"), "--checkpoints", str(tmp_path / "ck")]
    argv += ["--params", str(PARAMS), "--no-flow", "--no-progress", "--tubes-plot", str(plot)]
    assert pretrain.main(argv) == 0
    assert (tmp_path / "m" / "model.pt").is_file()
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.size == canvas_size(len(get_tube_set("embedded")))
        assert len(image.convert("RGB").getcolors(maxcolors=100_000)) > 4  # drawn, not blank
    assert not list(plot.parent.glob(".*tmp*"))  # written atomically


def test_start_weights_must_lie_in_the_declared_weights_folder(base, shards, tmp_path):
    """``--weights <dir>`` (the dvc.yaml dependency): an ``init_from`` / ``tubes_from`` outside it is refused
    before anything runs, naming the key; inside it (or a run without ``--weights``) it is used."""
    inside = tmp_path / "weights" / "vit.pth"
    inside.parent.mkdir()
    torch.save(_image_vit("timm"), inside)
    outside = tmp_path / "elsewhere.pth"
    params = _with(micro_params(), init_from=str(outside))
    for weights in (tmp_path / "weights", Path("weights")):
        with pytest.raises(
            ValueError,
            match=r"^pretrain.init_from: .*elsewhere.pth is outside .*weights/, the folder dvc.yaml declares",
        ):
            pretrain.run(params, shards, tmp_path / "x", None, progress=False, weights_dir=weights)
    assert not (tmp_path / "x").exists()
    trick = _with(micro_params(), init_from=str(tmp_path / "weights" / ".." / "elsewhere.pth"))
    with pytest.raises(ValueError, match="outside"):
        training.check_start_weights(trick.pretrain, tmp_path / "weights")
    scaled = _with(
        micro_params(), init_from=str(inside), tubes_from=str(micro_pretrained(base)), scale_from_layer=2
    )
    with pytest.raises(ValueError, match=r"^pretrain.tubes_from: .* is outside"):
        training.check_start_weights(scaled.pretrain, tmp_path / "weights")
    training.check_start_weights(_with(micro_params(), init_from=str(inside)).pretrain, tmp_path / "weights")
    training.check_start_weights(params.pretrain, None)


@pytest.fixture
def keep_torch_threads():
    """Restore torch's thread count after a test that sets it."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize(
    ("cpus", "workers", "ranks", "threads"),
    [(2, 0, 1, 2), (2, 1, 1, 1), (2, 2, 1, 1), (2, 0, 2, 1), (16, 3, 2, 5), (1, 0, 1, 1)],
)
def test_configure_threads_gives_the_cores_the_loader_leaves(
    monkeypatch, keep_torch_threads, cpus, workers, ranks, threads
):
    monkeypatch.setattr(training.os, "cpu_count", lambda: cpus)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert training.configure_threads(torch.device("cpu"), workers, ranks) == threads
    assert torch.get_num_threads() == threads
    assert training.configure_threads(torch.device("cuda"), workers, ranks) == threads  # left alone


def test_configure_threads_follows_an_explicit_omp_num_threads(monkeypatch, keep_torch_threads):
    monkeypatch.setattr(training.os, "cpu_count", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert training.configure_threads(torch.device("cpu"), 0) == 1
    assert torch.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert training.configure_threads(torch.device("cpu"), 0) == 3
    for bad in ("0", "two", "-1", ""):
        monkeypatch.setenv("OMP_NUM_THREADS", bad)
        with pytest.raises(ValueError, match=f"OMP_NUM_THREADS: must be a positive integer, got {bad!r}"):
            training.configure_threads(torch.device("cpu"), 0)
