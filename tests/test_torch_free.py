"""The data stages never import torch (issue 8: every DVC stage is a fresh process, torch costs ~3 s).

Each check runs in a fresh interpreter and lists the ``torch`` modules loaded: the stage modules and their
helpers, ``load_params`` of the repo's params.yaml and of the ``paper`` profiles, a real ``python -m
pipelines.download / reencode / shard`` run on synthetic clips, and ModelConfig's validation errors, which
must keep their messages now that they come from the torch-free ``tubevit.model.specs`` / ``variants``.
A control import of the model proves the probe does see torch when it is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every module a data stage (download, reencode, shard) imports, the params loader and profile CLI, the
# config classes, and the torch-free model modules with the package that holds them.
DATA_MODULES = (
    "pipelines",
    "pipelines.common",
    "pipelines.params",
    "pipelines.profile",
    "pipelines.media",
    "pipelines.probe",
    "pipelines.encode",
    "pipelines.verify",
    "pipelines.datasets",
    "pipelines.datasets.base",
    "pipelines.datasets.kinetics",
    "pipelines.datasets.charades",
    "pipelines.datasets.ssv2",
    "pipelines.datasets.imagenet",
    "pipelines.datasets.synthetic",
    "pipelines.download",
    "pipelines.reencode",
    "pipelines.shard",
    "tubevit.config",
    "tubevit.config.base",
    "tubevit.config.data",
    "tubevit.config.model",
    "tubevit.config.train",
    "tubevit.model",
    "tubevit.model.specs",
    "tubevit.model.variants",
)

# Imports the modules named in argv one by one; prints {module: [torch modules it brought in]} as JSON.
IMPORT_PROBE = """
import importlib, json, sys
def torch_modules():
    return {m for m in sys.modules if m == "torch" or m.startswith("torch.")}
brought = {}
for name in sys.argv[1:]:
    before = torch_modules()
    importlib.import_module(name)
    brought[name] = sorted(torch_modules() - before)
print(json.dumps(brought))
"""

# load_params of each file in argv; prints [[model section, torch modules loaded so far], ...] as JSON.
PARAMS_PROBE = """
import json, sys
from pipelines.params import load_params
from tubevit.config.base import to_dict
out = []
for path in sys.argv[1:]:
    params = load_params(path)
    out.append([to_dict(params.model), sorted(m for m in sys.modules if m.split(".")[0] == "torch")])
print(json.dumps(out))
"""

# Runs `python -m <argv[1]> <argv[3:]>` in this process, then writes its exit status and the torch modules
# loaded to the JSON file argv[2].
STAGE_PROBE = """
import json, runpy, sys
module, report, *args = sys.argv[1:]
sys.argv = [module, *args]
rc = 0
try:
    runpy.run_module(module, run_name="__main__", alter_sys=True)
except SystemExit as exc:
    rc = exc.code
with open(report, "w") as f:
    json.dump({"rc": rc, "torch": sorted(m for m in sys.modules if m.split(".")[0] == "torch")}, f)
"""

# Builds ModelConfig from each JSON mapping in argv; prints [[error message, torch modules], ...].
ERROR_PROBE = """
import json, sys
from tubevit.config.base import ConfigError, build
from tubevit.config.model import ModelConfig
out = []
for data in sys.argv[1:]:
    try:
        build(ModelConfig, json.loads(data), "model")
        message = None
    except ConfigError as exc:
        message = str(exc)
    out.append([message, sorted(m for m in sys.modules if m.split(".")[0] == "torch")])
print(json.dumps(out))
"""


def _python(code: str, *args: str, cwd: Path = ROOT) -> str:
    """Run ``code`` in a fresh interpreter importing this checkout; its stdout (must exit 0)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    return proc.stdout


def test_data_stage_modules_do_not_import_torch():
    brought = json.loads(_python(IMPORT_PROBE, *DATA_MODULES))
    assert list(brought) == list(DATA_MODULES)
    assert {name: mods for name, mods in brought.items() if mods} == {}


def test_the_probe_sees_torch_when_the_model_is_imported():
    # the control: the same probe reports torch for the model modules (so an empty report means something)
    brought = json.loads(_python(IMPORT_PROBE, "tubevit.model.specs", "tubevit.model.tubes"))
    assert brought["tubevit.model.specs"] == []
    assert "torch" in brought["tubevit.model.tubes"] and "torch.nn" in brought["tubevit.model.tubes"]


def test_package_names_load_torch_only_when_the_model_is_asked_for():
    code = """
import json, sys
def has_torch():
    return "torch" in sys.modules
from tubevit.model import VARIANTS, TubeSpec, get_tube_set, parse_tubes
steps = [has_torch(), VARIANTS["base"].embed_dim, len(get_tube_set("paper")), str(parse_tubes("dense")[0])]
from tubevit.model import TubeViT
steps += [has_torch(), TubeViT.__module__]
print(json.dumps(steps))
"""
    steps = json.loads(_python(code))
    assert steps == [
        False,
        768,
        4,
        "2x16x16 stride=(2, 16, 16) offset=(0, 0, 0)",
        True,
        "tubevit.model.tubevit",
    ]


def test_old_import_paths_are_the_same_objects():
    import tubevit.model as package
    from tubevit.model import specs, tubes, tubevit, variants

    for name in ("TubeSpec", "TubeSpecError", "grid", "num_tokens", "token_counts", "get_tube_set"):
        assert getattr(tubes, name) is getattr(specs, name), name
    for name in ("parse_tubes", "dense_tubes", "TUBE_SETS", "TABLE5_RESULTS", "TABLE5_ALIASES"):
        assert getattr(tubes, name) is getattr(specs, name), name
    assert tubevit.VARIANTS is variants.VARIANTS and tubevit.Variant is variants.Variant
    assert package.TubeSpec is specs.TubeSpec and package.parse_tubes is specs.parse_tubes
    assert package.VARIANTS is variants.VARIANTS and package.create_model is tubevit.create_model
    assert package.TubeViT is tubevit.TubeViT
    assert set(package.__all__) <= set(dir(package))
    assert set(tubes.__all__) <= set(dir(tubes)) and set(tubevit.__all__) <= set(dir(tubevit))
    with pytest.raises(AttributeError, match=r"^module 'tubevit.model' has no attribute 'Tubevit'$"):
        package.Tubevit  # noqa: B018


def test_load_params_of_the_repo_and_of_profiles_does_not_import_torch(tmp_path):
    from pipelines.profile import main as profile_main

    files = [str(ROOT / "params.yaml")]
    for variant in ("base", "huge"):
        path = tmp_path / f"paper-{variant}.yaml"
        shutil.copyfile(ROOT / "params.yaml", path)
        argv = ["paper", "--variant", variant, "--params", str(path), "--recipes", str(ROOT / "recipes.yaml")]
        assert profile_main([*argv, "--allow-synthetic"]) == 0
        files.append(str(path))
    loaded = json.loads(_python(PARAMS_PROBE, *files))
    assert [torch for _, torch in loaded] == [[], [], []]
    assert [(m["variant"], m["tubes"]) for m, _ in loaded] == [
        ("nano", "embedded32"),
        ("base", "paper"),
        ("huge", "paper"),
    ]


def test_model_config_errors_keep_their_messages_without_torch():
    cases = [
        {"tubes": [{"kernel": [4, 4, 4], "stride": [9, 8, 8], "s2d": [3, 1, 1]}]},
        {"tubes": "nope"},
        {"tubes": [{"kernel": [4, 4, 4], "stride": [3, 8, 8], "s2d": [2, 1, 1]}]},
        {"variant": "mega"},
        {"variant": "tiny", "tubes": "paper"},
    ]
    out = json.loads(_python(ERROR_PROBE, *map(json.dumps, cases)))
    assert [torch for _, torch in out] == [[]] * len(cases)
    messages = [message for message, _ in out]
    assert messages[0] == (
        "model.tubes[0].s2d: S2D factor 3 of tube 4x4x4 stride=(9, 8, 8) offset=(0, 0, 0) s2d=(3, 1, 1) "
        "does not divide the nano width 64"
    )
    assert messages[1] == (
        "model.tubes: unknown tube set 'nope'; known: paper, charades_interpolated, embedded, "
        "embedded_interpolated, embedded32, embedded32_interpolated, table5_1, table5_aiv_bv_fiv, table5_2, "
        "table5_civ_ev_giv, table5_3, table5_civ_civ_civ, table5_4, table5_aiv_ev_giv, table5_5, "
        "table5_biv_ev_giv, table5_6, table5_aiv_dv_eiv_bv, table5_7, table5_aiv_bv_civ_hv, table5_8, "
        "table5_aiv_dv_eiv_fv, dense"
    )
    assert (
        messages[2]
        == "model.tubes[0].stride: t stride 3 is not divisible by its S2D factor 2 (s2d=(2, 1, 1))"
    )
    assert (
        messages[3]
        == "model.variant: must be one of 'nano', 'tiny', 'small', 'base', 'large', 'huge', got 'mega'"
    )
    assert messages[4] is None  # tiny (192) is divisible by the paper set's S2D factors 2 and 4


def test_real_download_reencode_shard_runs_do_not_import_torch(tmp_path):
    shutil.copyfile(ROOT / "tests" / "fixtures" / "params-micro.yaml", tmp_path / "params.yaml")
    stages = [
        ("pipelines.download", "kinetics", "--out", "raw/kinetics"),
        ("pipelines.reencode", "kinetics", "--raw", "raw/kinetics", "--out", "videos/kinetics"),
        ("pipelines.shard", "kinetics", "--videos", "videos/kinetics", "--out", "shards/kinetics"),
    ]
    for module, *args in stages:
        report = tmp_path / f"{module}.json"
        _python(STAGE_PROBE, module, str(report), *args, "--params", "params.yaml", "--no-flow", cwd=tmp_path)
        assert json.loads(report.read_text()) == {"rc": 0, "torch": []}, module
    for split in ("train", "val"):  # params-micro: 8 synthetic clips per split, all sharded
        index = json.loads((tmp_path / "shards" / "kinetics" / split / "index.json").read_text())
        assert index["total"] == 8 and sum(e["samples"] for e in index["shards"]) == 8
        assert sorted(p.name for p in (tmp_path / "shards" / "kinetics" / split).glob("*.tar")) == [
            e["name"] for e in index["shards"]
        ]
