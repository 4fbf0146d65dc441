"""The worked examples in docs/recipes/ work as written.

Each recipe has one params excerpt (the only ```yaml block of its page) and the commands in the order a user
types them (```bash blocks). For each recipe, the excerpt is pasted over ``params.yaml`` as a user would paste
it (the SSv2 and Charades recipes after the Kinetics-400 one, which they build on). Then the result must:
- validate with ``pipelines.params``;
- agree with the paper profile that the page tells the user to apply (the profile would change none of the
  excerpt's values, and none at all once the three recipes are pasted);
- give Table 1's global batch on the documented GPUs, and the documented token count;
- build model, optimiser, schedule and loader on the meta device.
The page's ``dvc exp run -S`` overrides must validate too, and its ``dvc repro`` / ``dvc commit`` targets and
multi-node ``torchrun`` commands must match the stages of ``dvc.yaml``. Runs in seconds.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from ruamel.yaml import YAML

from pipelines.params import ConfigError, Params, load_params, read_yaml
from pipelines.profile import apply_profile
from pipelines.profile import main as profile_main
from tubevit.config.base import to_dict
from tubevit.config.model import build_model
from tubevit.data.shards import train_loader
from tubevit.model.tubes import token_counts
from tubevit.train.optim import build_optimizer, build_schedule

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
RECIPES = ROOT / "docs" / "recipes"
NAMES = ("kinetics400", "ssv2", "charades")  # the SSv2 and Charades recipes build on the Kinetics-400 one

# What each recipe trains: the params section, its datasets, supplement Table 1's global batch, and the
# tokens per clip of its tube set (paper set: 1176 at 64x224^2, 539 at 32x224^2; interpolated: 2499 at 128).
STAGES = {
    "kinetics400": {
        "section": "pretrain",
        "datasets": ("kinetics", "imagenet"),
        "batch": 256,
        "tokens": 1176,
    },
    "ssv2": {"section": "finetune.ssv2", "datasets": ("ssv2",), "batch": 256, "tokens": 539},
    "charades": {"section": "finetune.charades", "datasets": ("charades",), "batch": 64, "tokens": 2499},
}
GPUS = 8  # one 8-GPU node


@dataclass(frozen=True)
class Recipe:
    name: str
    excerpt: dict[str, Any]
    commands: tuple[tuple[str, ...], ...]  # argv of every command line of the bash blocks, in order


def fenced_blocks(text: str, language: str) -> list[str]:
    """The contents of the fenced code blocks of ``language`` in markdown ``text``."""
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.M | re.S)


def command_lines(block: str) -> list[tuple[str, ...]]:
    """argv of each command of a bash block (continuation lines joined, comments and blank lines dropped)."""
    joined = re.sub(r"\\\n", " ", block)
    return [tuple(argv) for line in joined.splitlines() if (argv := shlex.split(line, comments=True))]


def load_recipe(name: str) -> Recipe:
    text = (RECIPES / f"{name}.md").read_text(encoding="utf-8")
    yaml_blocks = fenced_blocks(text, "yaml")
    assert len(yaml_blocks) == 1, (
        f"docs/recipes/{name}.md: expected one ```yaml block, found {len(yaml_blocks)}"
    )
    excerpt = YAML(typ="safe", pure=True).load(yaml_blocks[0])  # YAML 1.2, as DVC and pipelines.params read
    commands = [argv for block in fenced_blocks(text, "bash") for argv in command_lines(block)]
    return Recipe(name, excerpt, tuple(commands))


def merge(base: dict, over: dict) -> dict:
    """``over`` pasted onto ``base``: mappings merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = (
            merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        )
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a.b.c": leaf}`` of a nested mapping (lists are leaves)."""
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out |= flatten(value, f"{prefix}.{key}" if prefix else str(key))
    return out


def stack(name: str) -> list[str]:
    """The recipes a user has pasted when following ``name``: Kinetics-400 first."""
    return ["kinetics400"] if name == "kinetics400" else ["kinetics400", name]


def write_params(tmp_path: Path, names: list[str], extra: dict | None = None) -> Path:
    """``params.yaml`` with the excerpts of ``names`` pasted in order (then ``extra``), in ``tmp_path``."""
    data = read_yaml(PARAMS)
    for name in names:
        data = merge(data, load_recipe(name).excerpt)
    if extra:
        data = merge(data, extra)
    path = tmp_path / "params.yaml"
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    with open(path, "w", encoding="utf-8") as f:
        yaml.dump(data, f)
    return path


def profile_command(recipe: Recipe) -> tuple[str, ...]:
    """The arguments of the page's ``python -m pipelines.profile`` command (without ``--dry-run``)."""
    found = {
        tuple(a for a in argv[3:] if a != "--dry-run")
        for argv in recipe.commands
        if argv[:3] == ("python", "-m", "pipelines.profile")
    }
    assert len(found) == 1, f"{recipe.name}: expected one profile command, found {sorted(found)}"
    return found.pop()


def profile_kwargs(args: tuple[str, ...]) -> dict[str, Any]:
    """``apply_profile`` keywords of ``paper --variant base --nproc 8 [--allow-synthetic]`` (the page's)."""
    profile, *rest = args
    flags = [a for a in rest if a == "--allow-synthetic"]
    rest = [a for a in rest if a != "--allow-synthetic"]
    options = dict(zip(rest[::2], rest[1::2], strict=True))
    assert set(options) <= {"--variant", "--nproc", "--micro-batch"}, options
    kwargs: dict[str, Any] = {
        "profile": profile,
        "variant": options["--variant"],
        "allow_synthetic": bool(flags),
    }
    if "--nproc" in options:
        kwargs["nproc"] = int(options["--nproc"])
    if "--micro-batch" in options:
        kwargs["micro_batch"] = int(options["--micro-batch"])
    return kwargs


def section(params: Params, dotted: str) -> Any:
    node: Any = params
    for name in dotted.split("."):
        node = node[name] if isinstance(node, dict) else getattr(node, name)
    return node


def plain(value: Any) -> Any:
    """Lists and tuples compared alike; ints and floats by value."""
    return to_dict(value) if isinstance(value, tuple | list) else value


# ------------------------------------------------------------------------------------------------ the page


@pytest.mark.parametrize("name", NAMES)
def test_recipe_page_has_one_excerpt_and_the_commands_in_order(name):
    recipe = load_recipe(name)
    assert set(recipe.excerpt) <= set(read_yaml(PARAMS)), "the excerpt names a section params.yaml lacks"
    heads = [" ".join(argv[:3]) for argv in recipe.commands]

    def first(prefix: str) -> int:
        hits = [i for i, head in enumerate(heads) if head.startswith(prefix)]
        assert hits, f"docs/recipes/{name}.md: no `{prefix}` command"
        return hits[0]

    order = [
        first("python -m pipelines.profile"),
        first("python -m pipelines.params"),
        first("git commit"),
        first("dvc repro shard@"),
        first("dvc repro evaluate@"),
        first("dvc metrics show"),
        first("dvc exp run"),
        first("torchrun"),
    ]
    assert order == sorted(order), f"docs/recipes/{name}.md: commands out of order: {order}"
    assert ("python", "-m", "pipelines.params", "--check", "params.yaml") in recipe.commands
    # every recipe applies the same profile: the three share one params.yaml
    args = profile_command(recipe)
    assert [a for a in args if a != "--allow-synthetic"] == [
        "paper",
        "--variant",
        "base",
        "--nproc",
        str(GPUS),
    ]


# ------------------------------------------------------------------------ params: validate, agree, build


@pytest.mark.parametrize("name", NAMES)
def test_recipe_validates_and_builds_on_meta(tmp_path, name):
    recipe = load_recipe(name)
    stage = STAGES[name]
    path = write_params(tmp_path, stack(name))
    p = load_params(path)

    # the excerpt reached the params as written (nothing shadowed or dropped)
    loaded = flatten(p.to_dict())
    for key, value in flatten(recipe.excerpt).items():
        assert key in loaded, f"{name}: {key} is not a params key"
        assert plain(loaded[key]) == plain(value), (
            f"{name}: {key} is {loaded[key]!r}, the page says {value!r}"
        )

    # the documented profile command agrees with every value of the excerpt
    kwargs = profile_kwargs(profile_command(recipe))
    changes = apply_profile(path, **kwargs, dry_run=True)
    if kwargs["allow_synthetic"]:  # the page passes --allow-synthetic only where the profile needs it
        with pytest.raises(ConfigError, match=r"^datasets\.\w+\.source: still 'synthetic'"):
            apply_profile(path, **(kwargs | {"allow_synthetic": False}), dry_run=True)
    disagree = [(key, new) for key, _old, new in changes if key in flatten(recipe.excerpt)]
    assert disagree == [], f"{name}: the paper profile would change {disagree}"

    # real data, Table 1's global batch on one 8-GPU node
    for ds in stage["datasets"]:
        assert p.datasets[ds].source != "synthetic", f"{name}: datasets.{ds} is still synthetic"
    cfg = section(p, stage["section"])
    loaders = cfg.loader if isinstance(cfg.loader, dict) else {stage["datasets"][0]: cfg.loader}
    assert cfg.nproc == GPUS
    assert (cfg.device, cfg.precision, cfg.compile) == ("cuda", "bf16", True)  # a GPU recipe
    assert {lcfg.augment_on for lcfg in loaders.values()} == {"device"}
    for ds, lcfg in loaders.items():
        assert lcfg.batch_size * cfg.accum_steps * cfg.nproc == stage["batch"], f"{name}: {ds} batch"
        assert (lcfg.size, lcfg.randaugment_ops, lcfg.randaugment_magnitude) == (224, 2, 10)
        assert tuple(lcfg.crop_scale) == (0.25, 1.0)  # the pinned crop scale

    # build on the meta device: model, optimiser, schedule, loaders
    heads = {ds: p.datasets[ds].num_classes for ds in stage["datasets"]}
    assert all(k > 0 for k in heads.values()), heads
    overrides: dict[str, Any] = {}
    if stage["section"].startswith("finetune."):
        overrides = {"head_dropout": cfg.dropout} | ({"tubes": cfg.tubes} if cfg.tubes else {})
    with torch.device("meta"):
        model = build_model(p.model, heads, **overrides)
    assert all(t.device.type == "meta" for t in model.parameters())
    if p.model.variant == "base":  # the image path of ViT-B is 86.42M (design: head and parameter counts)
        assert 86e6 < sum(t.numel() for t in model.parameters()) < 92e6

    video = next(ds for ds in stage["datasets"] if not p.datasets[ds].is_image)
    frames, size = loaders[video].frames, loaders[video].size
    assert sum(token_counts(model.tubes, frames, size, size)) == stage["tokens"]
    assert sum(token_counts(model.tubes, 1, size, size)) == 196  # an image: the 1x16x16 tube only

    optimizer = build_optimizer(model, cfg.optim)
    schedule = build_schedule(optimizer, cfg.optim, cfg.steps)
    assert [g["weight_decay"] for g in optimizer.param_groups] == [cfg.optim.weight_decay, 0.0]
    warmup = cfg.optim.warmup_steps
    assert schedule.get_last_lr()[0] == pytest.approx(cfg.optim.lr / warmup)
    assert schedule.lr_lambdas[0](warmup) == pytest.approx(1.0)
    assert schedule.lr_lambdas[0](cfg.steps) == pytest.approx(0.0, abs=1e-12)

    for ds, lcfg in loaders.items():
        loader = train_loader(
            [f"shards/{ds}/train/{ds}-train-000000.tar"],
            lcfg,
            dataset=ds,
            num_classes=heads[ds],
            multilabel=p.datasets[ds].multilabel,
            seed=cfg.seed,
            epoch_batches=10,
            rank=0,
            world_size=cfg.nproc,
        )
        assert loader.pipeline(0) is not None  # the WebDataset pipeline builds without reading a shard


def test_recipes_together_are_what_the_profile_writes(tmp_path, capsys):
    """Pasted in order, the three excerpts hold every value the paper profile sets: it changes nothing."""
    path = write_params(tmp_path, list(NAMES))
    load_params(path)
    # every dataset is real now: the profile needs no --allow-synthetic
    args = tuple(a for a in profile_command(load_recipe("kinetics400")) if a != "--allow-synthetic")
    assert apply_profile(path, **profile_kwargs(args), dry_run=True) == []
    before = path.read_bytes()
    assert profile_main([*args, "--params", str(path)]) == 0  # as typed on the page
    assert path.read_bytes() == before
    assert "changed 0 values" in capsys.readouterr().err


def test_an_excerpt_with_a_typo_is_refused(tmp_path):
    """The checks above can fail: a misspelt key is refused, a value the profile disagrees with is found."""
    path = write_params(tmp_path, ["kinetics400"], {"pretrain": {"loader": {"kinetics": {"frame": 64}}}})
    with pytest.raises(ConfigError, match=r"^pretrain\.loader\.kinetics\.frame: "):
        load_params(path)
    path = write_params(tmp_path, list(NAMES), {"pretrain": {"optim": {"lr": 1e-4}}})
    changes = apply_profile(path, "paper", "base", nproc=GPUS, dry_run=True)
    assert [(k, new) for k, _old, new in changes] == [("pretrain.optim.lr", 5e-5)]


# --------------------------------------------------------------------- the commands against dvc.yaml


def dvc_stages() -> dict[str, tuple[str, ...]]:
    """Every stage name of dvc.yaml (``foreach`` expanded) -> its command's argv."""
    doc = YAML(typ="safe", pure=True).load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))
    out: dict[str, tuple[str, ...]] = {}
    for name, stage in doc["stages"].items():
        if "foreach" not in stage:
            out[name] = tuple(shlex.split(stage["cmd"]))
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((item, item) for item in items)
        for key, item in pairs:
            cmd = stage["do"]["cmd"].replace("${key}", str(key))
            if isinstance(item, dict):
                for field, value in item.items():
                    cmd = cmd.replace("${item." + field + "}", str(value))
            else:
                cmd = cmd.replace("${item}", str(item))
            out[f"{name}@{key}"] = tuple(shlex.split(cmd))
    return out


@pytest.mark.parametrize("name", NAMES)
def test_recipe_commands_match_dvc_yaml(name):
    recipe = load_recipe(name)
    stages = dvc_stages()
    for argv in recipe.commands:
        if argv[:2] in (("dvc", "repro"), ("dvc", "commit")):
            targets = [a for a in argv[2:] if not a.startswith("-")]
            assert targets, argv
            assert set(targets) <= set(stages), f"{name}: unknown stage in {' '.join(argv)}"
        if argv[:3] == ("dvc", "exp", "run"):  # targets, so that no stage of another recipe runs
            args, targets = list(argv[3:]), []
            while args:
                arg = args.pop(0)
                if arg in ("-S", "--set-param", "-n", "--name"):
                    args.pop(0)
                elif not arg.startswith("-"):
                    targets.append(arg)
            assert targets and set(targets) <= set(stages), f"{name}: targets of {' '.join(argv)}"
            assert set(targets) <= {f"evaluate@{ds}" for ds in STAGES[name]["datasets"]}, argv
    torchruns = [argv for argv in recipe.commands if argv[0] == "torchrun"]
    assert torchruns, f"{name}: no multi-node command"
    for argv in torchruns:
        module_args = argv[argv.index("-m") + 1 :]
        assert "--no-flow" in module_args  # ranks never call Prefect
        wanted = tuple(a for a in module_args if a != "--no-flow")
        matches = [s for s, cmd in stages.items() if cmd[:2] == ("python", "-m") and cmd[2:] == wanted]
        assert len(matches) == 1, f"{name}: the torchrun command matches no dvc.yaml stage: {wanted}"
        commits = [a for a in recipe.commands if a[:2] == ("dvc", "commit")]
        assert commits and commits[-1][2:] == (matches[0],), f"{name}: commit the stage torchrun ran"


@pytest.mark.parametrize("name", NAMES)
def test_recipe_experiments_are_valid_overrides(tmp_path, name):
    recipe = load_recipe(name)
    runs = [argv for argv in recipe.commands if argv[:3] == ("dvc", "exp", "run")]
    assert runs, f"{name}: no experiment"
    base = flatten(read_yaml(write_params(tmp_path, stack(name))))
    for argv in runs:
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "-S"]
        assert sets, argv
        extra: dict[str, Any] = {}
        for item in sets:
            key, _, text = item.partition("=")
            assert key in base, f"{name}: -S {key}: not a key of the pasted params.yaml"
            node = extra
            *parents, last = key.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[last] = YAML(typ="safe", pure=True).load(text)  # DVC parses -S values as YAML
        p = load_params(write_params(tmp_path, stack(name), extra))
        for item in sets:
            key, _, text = item.partition("=")
            value = flatten(p.to_dict())[key]
            assert plain(value) == plain(YAML(typ="safe", pure=True).load(text)), (name, key, value)


# ------------------------------------------------------------------ the docs are self-contained

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    seen: dict[str, int] = {}
    out = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def test_slug_follows_github():
    assert slug("Re-encode") == "re-encode"
    assert slug("6. More than one node") == "6-more-than-one-node"
    assert (
        slug("The ffmpeg command (pinned: [design](design.md#re-encode))")
        == "the-ffmpeg-command-pinned-design"
    )
    assert slug("539 or 559 tokens") == "539-or-559-tokens"


@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc_links_resolve_inside_the_repository(doc):
    """Every link to a page or a section resolves in a fresh clone; nothing points outside the repository."""
    text = doc.read_text(encoding="utf-8")
    assert "../shared" not in text and "DESIGN.md" not in text, f"{doc.name} cites a file outside the repo"
    for target in LINK.findall(re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.is_relative_to(ROOT), f"{doc.name}: {target} leaves the repository"
        if path.suffix in (".png", ".svg", ".jpg"):
            continue  # pictures are rendered by `tubevit tubes` (tested with it)
        assert path.exists(), f"{doc.name}: {target}: no such file"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{doc.name}: {target}: no such section in {path.name}"


@pytest.mark.parametrize("page", ["README.md", "docs/pipeline.md"])
def test_multi_node_commands_elsewhere_match_dvc_yaml(page):
    """The README's and pipeline page's torchrun examples run a stage's own command (plus --no-flow)."""
    text = (ROOT / page).read_text(encoding="utf-8")
    commands = [argv for block in fenced_blocks(text, "bash") for argv in command_lines(block)]
    torchruns = [argv for argv in commands if argv[0] == "torchrun"]
    assert torchruns, page
    stages = dvc_stages()
    for argv in torchruns:
        wanted = tuple(a for a in argv[argv.index("-m") + 1 :] if a != "--no-flow")
        assert any(cmd[2:] == wanted for cmd in stages.values()), f"{page}: {wanted} is no dvc.yaml stage"
