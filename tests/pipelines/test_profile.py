"""Profiles: recipes.yaml's paper recipes equal supplement Table 1 value by value (and the pinned
augmentation); every profile switches, validates and builds (model, optimiser, schedule, loaders) on the
meta device; a paper profile refuses datasets still on synthetic data."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from pipelines.params import ConfigError, load_params, read_yaml
from pipelines.profile import (
    DEFAULT_RECIPES,
    RecipeError,
    apply_profile,
    load_recipes,
    profile_updates,
    split_batch,
)
from tubevit.config.model import build_model
from tubevit.data.shards import train_loader
from tubevit.train.optim import build_optimizer, build_schedule

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
RECIPES = ROOT / "recipes.yaml"

# Supplement Table 1 (the paper's supplement; docs/design.md), written out here by hand. K400/K600/K700
# share a column ("kinetics"). "-" in the table is 0 here. Size 224 and 4x3 views: main paper (Table 7f).
TABLE1_COMMON = {
    "optimizer": "adam",
    "schedule": "cosine",  # cosine decay + linear warmup
    "warmup_steps": 10_000,
    "steps": 300_000,
    "randaugment_ops": 2,
    "randaugment_magnitude": 10,
    "size": 224,
    "temporal_views": 4,
    "spatial_views": 3,
}
TABLE1 = {
    "kinetics": {
        "batch_size": 256,
        "mixup": 0.0,
        "dropout": 0.0,
        "label_smoothing": 0.0,
        "frames": 64,
        "fps": 15,
    },
    "charades": {
        "batch_size": 64,
        "mixup": 0.0,
        "dropout": 0.2,
        "label_smoothing": 0.1,
        "frames": 128,
        "fps": 6,
    },
    "ssv2": {
        "batch_size": 256,
        "mixup": 0.3,
        "dropout": 0.3,
        "label_smoothing": 0.3,
        "frames": 32,
        "fps": 24,
    },
}
TABLE1_LR = {  # base learning rate: "5e-5 (L,H 1e-5)", 1e-3, 2e-5
    "kinetics": {"base": 5e-5, "large": 1e-5, "huge": 1e-5},
    "charades": {"base": 1e-3, "large": 1e-3, "huge": 1e-3},
    "ssv2": {"base": 2e-5, "large": 2e-5, "huge": 2e-5},
}
TABLE1_WD = {"base": 1e-3, "large": 1e-5, "huge": 1e-5}  # "0.001 (B) 1e-5 (L,H)", every dataset
VARIANTS = ("base", "large", "huge")
# Pinned augmentation (docs/design.md "Training": RandomResizedCrop(scale=(0.25, 1), ratio=(3/4, 4/3))) and
# our gradient clipping choice (the paper states none): every paper recipe.
PINNED_AUGMENTATION = {"crop_scale": (0.25, 1.0), "crop_ratio": (0.75, 4 / 3), "clip_grad": 1.0}
NUM_CLASSES = {"kinetics": 600, "imagenet": 1000, "charades": 157, "ssv2": 174}  # the real datasets


@pytest.fixture(scope="module")
def params():
    return load_params(PARAMS)


@pytest.fixture(scope="module")
def recipes():
    return load_recipes(RECIPES)


@pytest.mark.parametrize("dataset", list(TABLE1))
@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_recipes_equal_table1(recipes, dataset, variant):
    recipe = recipes["paper"][dataset][variant]
    expected = {**TABLE1_COMMON, **TABLE1[dataset], **PINNED_AUGMENTATION}
    expected["lr"] = TABLE1_LR[dataset][variant]
    expected["weight_decay"] = TABLE1_WD[variant]
    for key, value in expected.items():
        assert getattr(recipe, key) == value, f"paper.{dataset}.{variant}.{key}"
    assert recipe.wd_mode == "adamw"  # decoupled weight decay (docs/design.md "Training")
    assert recipe.tubes == ("charades_interpolated" if dataset == "charades" else "paper")
    assert recipe.compile is True  # paper recipes are for GPUs
    assert (recipe.precision, recipe.augment_on) == ("bf16", "device")
    assert recipe.grad_checkpointing is (variant != "base")
    assert set(recipes["paper"]) == set(TABLE1)
    assert set(recipes["paper"][dataset]) == set(VARIANTS)


def test_recipes_are_out_of_params():
    """params.yaml holds only the active sections (what `dvc exp show` lists); the recipes file is the
    repository's default for pipelines.profile."""
    assert set(read_yaml(PARAMS)) == {
        "datasets",
        "reencode",
        "shard",
        "model",
        "pretrain",
        "finetune",
        "evaluate",
        "deploy",
    }
    assert DEFAULT_RECIPES == RECIPES
    assert set(load_recipes()) == {"embedded", "paper"}


def test_split_batch():
    assert split_batch(256, 1) == (32, 8)
    assert split_batch(256, 8) == (32, 1)
    assert split_batch(64, 1) == (32, 2)
    assert split_batch(256, 4, micro_batch=4) == (4, 16)
    assert split_batch(32, 1) == (32, 1)
    with pytest.raises(ConfigError, match="global batch 256 is not divisible by nproc=3"):
        split_batch(256, 3)
    with pytest.raises(ConfigError, match="not divisible by 48"):
        split_batch(256, 1, micro_batch=48)


def _copy_params(tmp_path: Path) -> Path:
    path = tmp_path / "params.yaml"
    shutil.copyfile(PARAMS, path)
    return path


@pytest.mark.parametrize("variant", VARIANTS)
def test_paper_profile_sets_the_active_sections(tmp_path, params, recipes, variant):
    path = _copy_params(tmp_path)
    changes = apply_profile(path, "paper", variant, nproc=2, micro_batch=4, allow_synthetic=True)
    assert changes, "the embedded default differs from the paper"
    p = load_params(path)
    k, c, s = (recipes["paper"][ds][variant] for ds in ("kinetics", "charades", "ssv2"))

    assert (p.model.variant, p.model.tubes, p.model.head_dropout) == (variant, "paper", 0.0)
    pre = p.pretrain
    assert (pre.optim.lr, pre.optim.weight_decay, pre.optim.wd_mode) == (k.lr, k.weight_decay, "adamw")
    assert (pre.optim.warmup_steps, pre.steps, pre.optim.schedule) == (10_000, 300_000, "cosine")
    assert (pre.nproc, pre.accum_steps) == (2, 32)
    for name, lcfg in pre.loader.items():
        assert lcfg.batch_size * pre.accum_steps * pre.nproc == 256  # the global batch of Table 1
        assert lcfg.frames == (1 if name == "imagenet" else 64)
        assert (lcfg.size, lcfg.randaugment, lcfg.randaugment_ops, lcfg.randaugment_magnitude) == (
            224,
            True,
            2,
            10,
        )
        assert (lcfg.crop_scale, lcfg.crop_ratio) == ((0.25, 1.0), (0.75, 4 / 3))  # pinned, not [0.5, 1]
    assert (pre.optim.clip_grad, pre.compile) == (1.0, True)
    # GPU recipes: bf16, compile, augmentation on the device, activation checkpointing for L and H
    checkpointing = variant != "base"
    assert (pre.precision, pre.grad_checkpointing) == ("bf16", checkpointing)
    assert {lcfg.augment_on for lcfg in pre.loader.values()} == {"device"}
    for section in p.finetune.values():
        assert (section.precision, section.grad_checkpointing, section.compile) == (
            "bf16",
            checkpointing,
            True,
        )
        assert section.loader.augment_on == "device"
    assert (p.evaluate.temporal_views, p.evaluate.spatial_views) == (4, 3)

    ch = p.finetune["charades"]
    assert (ch.optim.lr, ch.optim.weight_decay, ch.steps) == (1e-3, TABLE1_WD[variant], 300_000)
    assert ch.loader.batch_size * ch.accum_steps * ch.nproc == 64
    assert (ch.loader.frames, ch.loader.size, ch.label_smoothing, ch.dropout, ch.mixup) == (
        128,
        224,
        0.1,
        0.2,
        0.0,
    )
    assert ch.tubes == "charades_interpolated" and ch.multilabel
    assert (ch.loader.crop_scale, ch.loader.crop_ratio, ch.optim.clip_grad) == (
        (0.25, 1.0),
        (0.75, 4 / 3),
        1.0,
    )
    ss = p.finetune["ssv2"]
    assert (ss.optim.lr, ss.optim.weight_decay) == (2e-5, TABLE1_WD[variant])
    assert ss.loader.batch_size * ss.accum_steps * ss.nproc == 256
    assert (ss.loader.frames, ss.label_smoothing, ss.dropout, ss.mixup) == (32, 0.3, 0.3, 0.3)
    assert ss.tubes is None  # keeps the pretrained (paper) tubes
    assert (ss.loader.crop_scale, ss.loader.randaugment_ops, ss.compile) == ((0.25, 1.0), 2, True)

    fps = {name: cfg.fps for name, cfg in p.datasets.items() if not cfg.is_image}
    assert (
        fps
        == {"kinetics": k.fps, "charades": c.fps, "ssv2": s.fps}
        == {"kinetics": 15, "charades": 6, "ssv2": 24}
    )
    assert {cfg.short_side for cfg in p.datasets.values()} == {256}
    # data sources are left alone; recipes and unrelated sections are unchanged
    same = {
        n: dataclasses.replace(d, fps=p.datasets[n].fps, short_side=256) for n, d in params.datasets.items()
    }
    assert p.datasets == same
    assert (p.reencode, p.shard, p.deploy) == (params.reencode, params.shard, params.deploy)
    # comments and layout (flow-style lists too) are kept
    text = path.read_text()
    assert text.startswith(PARAMS.read_text().split("\n", 1)[0])
    assert "dask_address: null" in text and "# RandomResizedCrop scale and aspect ratio" in text
    assert "crop_scale: [0.25, 1.0]" in text


def test_embedded_profile_is_the_default_and_switches_back(tmp_path, params):
    path = _copy_params(tmp_path)
    assert apply_profile(path, "embedded", "nano") == []  # the active sections ARE the embedded recipe
    assert path.read_bytes() == PARAMS.read_bytes()
    apply_profile(path, "paper", "huge", allow_synthetic=True)
    assert load_params(path) != params
    changed = apply_profile(path, "embedded", "nano")
    assert len(changed) > 20
    assert load_params(path) == params


def test_profile_errors_leave_the_file_unchanged(tmp_path):
    path = _copy_params(tmp_path)
    with pytest.raises(RecipeError) as info:
        apply_profile(path, "paper", "tiny")
    assert info.value.key == "paper.kinetics.tiny"
    with pytest.raises(RecipeError, match="no such profile"):
        apply_profile(path, "papr", "base")
    with pytest.raises(ConfigError, match="not divisible by nproc=3"):
        apply_profile(path, "paper", "base", nproc=3, allow_synthetic=True)
    assert path.read_bytes() == PARAMS.read_bytes()

    result = subprocess.run(
        [sys.executable, "-m", "pipelines.profile", "paper", "--variant", "bse", "--params", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "recipes.yaml: paper.kinetics.bse: no such variant (defined: base, large, huge)"
    ]
    assert path.read_bytes() == PARAMS.read_bytes()


def test_paper_profile_refuses_synthetic_datasets_unless_allowed(tmp_path):
    """The embedded default is all synthetic: the paper profile names the first such dataset and the flag."""
    path = _copy_params(tmp_path)
    with pytest.raises(ConfigError) as info:
        apply_profile(path, "paper", "base")
    assert info.value.key == "datasets.kinetics.source"
    assert "still 'synthetic'" in info.value.reason and "--allow-synthetic" in info.value.reason
    assert path.read_bytes() == PARAMS.read_bytes()

    # kinetics on real data: the next synthetic dataset the profile sets (imagenet, mixed in pretraining)
    text = PARAMS.read_text().replace(
        "source: synthetic          # synthetic | local | http | youtube\n    uri: []",
        "source: local              # synthetic | local | http | youtube\n    uri: [/data/kinetics]",
        1,
    )
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        apply_profile(path, "paper", "base")
    assert info.value.key == "datasets.imagenet.source"
    assert path.read_text() == text
    assert apply_profile(path, "embedded", "nano") == []  # the embedded profile is made for synthetic data

    cmd = [sys.executable, "-m", "pipelines.profile", "paper", "--variant", "base", "--params", str(path)]
    refused = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"{path}: datasets.imagenet.source: still 'synthetic'")
    allowed = subprocess.run(
        [*cmd, "--allow-synthetic"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "model.variant: 'nano' -> 'base'" in allowed.stdout
    assert load_params(path).model.variant == "base"


def _write_recipes(tmp_path: Path, mutate) -> Path:
    data = read_yaml(RECIPES)
    mutate(data)
    path = tmp_path / "recipes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# (id, mutation of recipes.yaml, dotted key in the file, words of the reason)
BAD_RECIPES = [
    (
        "tubes",
        lambda d: d["paper"]["ssv2"]["base"].update(tubes="pape"),
        "paper.ssv2.base.tubes",
        "unknown tube set",
    ),
    (
        "fps",
        lambda d: d["paper"]["charades"]["large"].update(fps=-6),
        "paper.charades.large.fps",
        "must be > 0",
    ),
    (
        "variant",
        lambda d: d["paper"]["ssv2"].update(bse=d["paper"]["ssv2"]["base"]),
        "paper.ssv2.bse",
        "unknown model variant 'bse'",
    ),
    (
        "crop",
        lambda d: d["paper"]["kinetics"]["base"].update(crop_scale=[0.0, 1.0]),
        "paper.kinetics.base.crop_scale",
        "bad range",
    ),
    (
        "unknown",
        lambda d: d["paper"]["kinetics"]["base"].update(lr_peak=1),
        "paper.kinetics.base.lr_peak",
        "unknown key",
    ),
    (
        "missing",
        lambda d: d["paper"]["kinetics"]["base"].pop("clip_grad"),
        "paper.kinetics.base.clip_grad",
        "missing",
    ),
]


@pytest.mark.parametrize(("case", "mutate", "key", "reason"), BAD_RECIPES, ids=[b[0] for b in BAD_RECIPES])
def test_malformed_recipes_name_the_key(tmp_path, case, mutate, key, reason):
    recipes = _write_recipes(tmp_path, mutate)
    with pytest.raises(ConfigError) as info:
        load_recipes(recipes)
    assert (info.value.key, reason in info.value.reason) == (key, True), str(info.value)
    path = _copy_params(tmp_path)
    with pytest.raises(RecipeError) as info:
        apply_profile(path, "paper", "base", recipes=recipes, allow_synthetic=True)
    assert info.value.key == key
    assert path.read_bytes() == PARAMS.read_bytes()


def test_recipe_for_an_undefined_dataset_is_refused(tmp_path):
    recipes = _write_recipes(tmp_path, lambda d: d["paper"].update(k400=d["paper"]["kinetics"]))
    path = _copy_params(tmp_path)
    with pytest.raises(ConfigError) as info:
        apply_profile(path, "paper", "base", recipes=recipes, allow_synthetic=True)
    assert (info.value.key, info.value.reason) == (
        "paper.k400",
        "dataset 'k400' is not defined under datasets in params",
    )


# (profile, variant): every recipe set in recipes.yaml
PROFILES = [("paper", v) for v in VARIANTS] + [("embedded", "nano")]
PAPER_PARAMS_M = {
    "base": 91.3,
    "large": 311.7,
    "huge": 642.7,
}  # docs/design.md, IN1k + K600 heads, no head MLP


@pytest.mark.parametrize(("profile", "variant"), PROFILES, ids=[f"{p}-{v}" for p, v in PROFILES])
def test_every_profile_validates_and_builds_on_meta(tmp_path, profile, variant):
    path = _copy_params(tmp_path)
    apply_profile(path, profile, variant, allow_synthetic=True)
    p = load_params(path)

    def check_training(model, optim_cfg, steps):
        optimizer = build_optimizer(model, optim_cfg)
        schedule = build_schedule(optimizer, optim_cfg, steps)
        assert [g["weight_decay"] for g in optimizer.param_groups] == [optim_cfg.weight_decay, 0.0]
        assert all(param.device.type == "meta" for g in optimizer.param_groups for param in g["params"])
        warmup = optim_cfg.warmup_steps
        assert schedule.get_last_lr()[0] == pytest.approx(optim_cfg.lr / warmup)  # step 0 of the warmup
        assert schedule.lr_lambdas[0](warmup) == pytest.approx(1.0)  # peak at the end of warmup
        assert schedule.lr_lambdas[0](steps) == pytest.approx(0.0, abs=1e-12)  # cosine to 0

    def check_loader(name, lcfg):
        loader = train_loader(
            [f"shards/{name}/train/{name}-train-000000.tar"],
            lcfg,
            dataset=name,
            num_classes=NUM_CLASSES[name],
            multilabel=p.datasets[name].multilabel,
            seed=p.pretrain.seed,
            epoch_batches=10,
        )
        assert loader.pipeline(0) is not None  # the WebDataset pipeline builds without reading

    heads = {name: NUM_CLASSES[name] for name in p.pretrain.datasets}
    with torch.device("meta"):
        model = build_model(p.model, heads)
    n_params = sum(t.numel() for t in model.parameters())
    if profile == "paper":
        assert n_params / 1e6 == pytest.approx(PAPER_PARAMS_M[variant], abs=0.05)
    check_training(model, p.pretrain.optim, p.pretrain.steps)
    for name, lcfg in p.pretrain.loader.items():
        check_loader(name, lcfg)

    for name, ft in p.finetune.items():
        overrides = {"head_dropout": ft.dropout} | ({"tubes": ft.tubes} if ft.tubes else {})
        with torch.device("meta"):
            ft_model = build_model(p.model, {name: NUM_CLASSES[name]}, **overrides)
        # interpolated kernels keep the learned weights' shapes: the same tube parameters
        ft_tubes = sum(t.numel() for t in ft_model.tokenizer.parameters())
        assert ft_tubes == sum(t.numel() for t in model.tokenizer.parameters())
        check_training(ft_model, ft.optim, ft.steps)
        check_loader(name, ft.loader)


def test_recipes_can_set_how_training_runs(tmp_path, params):
    """precision, grad_checkpointing and augment_on (issue 8's GPU path) go to every training section and
    every loader when a recipe sets them, and are left alone when it does not (None)."""

    def gpu(d):
        for variants in d["paper"].values():
            for variant, recipe in variants.items():
                recipe |= {"precision": "bf16", "augment_on": "device"}
                recipe["grad_checkpointing"] = variant != "base"

    book = load_recipes(_write_recipes(tmp_path, gpu))
    large = profile_updates(params, book, "paper", "large", nproc=8, allow_synthetic=True)
    for section in ("pretrain", "finetune.charades", "finetune.ssv2"):
        assert (large[f"{section}.precision"], large[f"{section}.grad_checkpointing"]) == ("bf16", True)
        assert large[f"{section}.compile"] is True
    loaders = [key for key in large if key.endswith(".augment_on")]
    assert sorted(loaders) == [
        "finetune.charades.loader.augment_on",
        "finetune.ssv2.loader.augment_on",
        "pretrain.loader.imagenet.augment_on",
        "pretrain.loader.kinetics.augment_on",
    ]
    assert {large[key] for key in loaders} == {"device"}
    base = profile_updates(params, book, "paper", "base", nproc=8, allow_synthetic=True)
    assert base["pretrain.grad_checkpointing"] is False

    def plain(d):
        for variants in d["paper"].values():
            for recipe in variants.values():
                for key in ("precision", "grad_checkpointing", "augment_on"):
                    recipe.pop(key, None)

    unset = profile_updates(
        params, load_recipes(_write_recipes(tmp_path, plain)), "paper", "large", nproc=8, allow_synthetic=True
    )
    assert not [k for k in unset if k.endswith((".precision", ".grad_checkpointing", ".augment_on"))]
    with pytest.raises(ConfigError) as info:
        load_recipes(_write_recipes(tmp_path, lambda d: d["paper"]["ssv2"]["base"].update(precision="bf17")))
    assert info.value.key == "paper.ssv2.base.precision" and "'bf16'" in info.value.reason


def test_paper_huge_pretrains_by_image_to_video_scaling_and_base_from_scratch(tmp_path):
    """§3.6: the paper's H starts from an image ViT-H with a trained TubeViT-B's tubes, frozen before s = 26 of
    32 with the gated skip; B and L train in full. Switching back clears the scaling keys."""
    path = _copy_params(tmp_path)
    apply_profile(path, "paper", "huge", allow_synthetic=True)
    pcfg = load_params(path).pretrain
    assert (pcfg.scale_from_layer, pcfg.init_from, pcfg.tubes_from) == (
        26,
        "weights/vit-huge-16-image.pt",
        "weights/tubevit-base",
    )
    assert (pcfg.width_map, pcfg.gated, pcfg.freeze_before) == (
        "linear",
        True,
        None,
    )  # freeze_before None: = s
    changes = dict((k, new) for k, _old, new in apply_profile(path, "paper", "base", allow_synthetic=True))
    assert changes["pretrain.scale_from_layer"] == 0 and changes["pretrain.init_from"] is None
    pcfg = load_params(path).pretrain
    assert (pcfg.scale_from_layer, pcfg.init_from, pcfg.tubes_from, pcfg.width_map) == (0, None, None, "auto")


def test_a_scaling_recipe_without_its_weights_is_refused():
    recipe = load_recipes()["paper"]["kinetics"]["huge"]
    with pytest.raises(ConfigError, match=r"tubes_from.*image-to-video scaling needs it"):
        dataclasses.replace(recipe, tubes_from=None)
    with pytest.raises(ConfigError, match=r"scale_from_layer.*must be >= 1"):
        dataclasses.replace(recipe, scale_from_layer=0)
