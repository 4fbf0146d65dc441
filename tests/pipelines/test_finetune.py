"""The finetune stage on micro shards: new head, interpolated tubes for Charades, outputs, resume, errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from pipelines import finetune, training
from tests.fixtures.training_data import micro_finetuned, micro_params, micro_pretrained, micro_shards
from tubevit.model.tubes import get_tube_set, token_counts
from tubevit.train.loop import Callback, NonFiniteLossError


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "training-micro"


@pytest.fixture(scope="session")
def pretrained(base) -> Path:
    return micro_pretrained(base)


class Steps(Callback):
    def __init__(self):
        self.steps, self.losses = [], []

    def on_step(self, step, metrics):
        self.steps.append(step)
        self.losses.append(metrics["loss"])


def test_ssv2_new_head_and_outputs(base, pretrained, tmp_path):
    shards = micro_shards(base) / "ssv2"
    seen = Steps()
    summary = finetune.run(
        micro_params(), "ssv2", pretrained, shards, tmp_path / "m", tmp_path / "ck", tmp_path / "live",
        tmp_path / "t.json", callbacks=[seen], progress=False,
    )  # fmt: skip
    assert seen.steps == [1, 2] and summary["heads"] == {"ssv2": 10}
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert {k for k in state if k.startswith("heads.")} == {"heads.ssv2.weight", "heads.ssv2.bias"}
    assert state["heads.ssv2.weight"].shape == (10, 64)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["heads"] == {"ssv2": 10} and config["inputs"] == {
        "ssv2": {"frames": 8, "size": 64, "fps": 24.0, "short_side": 64}
    }
    assert config["model"]["head_dropout"] == 0.0  # the architecture; dropout is a training setting
    assert config["stage"] == "finetune-ssv2" and len(config["pretrained_sha256"]) == 64
    # the encoder started from the pretrained weights: after 2 small steps it is close to them
    pre = torch.load(pretrained / "model.pt", weights_only=True)
    w = (
        "blocks.0.attn.qkv.weight"
        if "blocks.0.attn.qkv.weight" in pre
        else next(k for k in pre if k.startswith("blocks."))
    )
    assert (state[w] - pre[w]).abs().max() < 0.05
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    assert json.loads((tmp_path / "t.json").read_text())["stage"] == "finetune-ssv2"


def test_charades_interpolated_tubes_keep_params_and_tokens(base, pretrained, tmp_path):
    model = micro_finetuned(base, "charades")
    config = json.loads((model / "config.json").read_text())
    assert config["model"]["tubes"] == [s.to_dict() for s in get_tube_set("embedded_interpolated")]
    assert config["multilabel"] == {"charades": True} and config["heads"] == {"charades": 12}
    pre = json.loads((pretrained / "config.json").read_text())
    head_params = (12 * 64 + 12) - sum(k * 64 + k for k in pre["heads"].values())  # heads replaced
    assert config["parameters"] == pre["parameters"] + head_params
    assert config["tokens"]["charades"] == pre["tokens"]["kinetics"] == 96

    bundle = training.load_model(model)
    assert bundle.model.tubes == get_tube_set("embedded_interpolated")
    # the learned kernels keep their pretrained shapes; only the forward resizes them
    state = torch.load(model / "model.pt", weights_only=True)
    assert state["tokenizer.tubes.0.proj.weight"].shape[2:] == (4, 4, 4)
    assert bundle.model.tokenizer(torch.zeros(1, 3, 8, 64, 64)).shape == (1, 96, 64)


def test_switch_tubes_refuses_a_set_that_is_not_an_interpolation(pretrained):
    bundle = training.load_model(pretrained)
    with pytest.raises(finetune.TubeSwitchError, match="paper"):
        finetune.switch_tubes(bundle.model, "paper", 8, 64)
    counts = finetune.switch_tubes(bundle.model, "embedded_interpolated", 8, 64)
    assert counts["tokens"] == sum(token_counts(get_tube_set("embedded"), 8, 64, 64))


def test_charades_window_labels_train_with_bce(base, pretrained, tmp_path):
    """Charades trains on multi-hot window labels with BCE: a loss near log 2 at the start, finite."""
    shards = micro_shards(base) / "charades"
    seen = Steps()
    finetune.run(
        micro_params(), "charades", pretrained, shards, tmp_path / "m", None, callbacks=[seen], progress=False
    )
    assert 0.2 < seen.losses[0] < 1.0  # BCE over 12 mostly-negative classes with smoothing 0.1


def test_resume_and_non_finite(base, pretrained, tmp_path):
    shards = micro_shards(base) / "ssv2"
    params = micro_params()
    first = Steps()
    finetune.run(
        params, "ssv2", pretrained, shards, tmp_path / "a", tmp_path / "ck", callbacks=[first], progress=False
    )
    again = Steps()
    summary = finetune.run(
        params, "ssv2", pretrained, shards, tmp_path / "b", tmp_path / "ck", callbacks=[again], progress=False
    )
    assert first.steps == [1, 2] and again.steps == [] and summary["start_step"] == 2
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)

    ft = params.finetune["ssv2"]
    bad = dataclasses.replace(ft, optim=dataclasses.replace(ft.optim, lr=1e30, clip_grad=0.0))
    bad_params = dataclasses.replace(params, finetune={**params.finetune, "ssv2": bad})
    with pytest.raises(NonFiniteLossError, match=r"^step 1: loss is (nan|inf)"):
        finetune.run(bad_params, "ssv2", pretrained, shards, tmp_path / "c", tmp_path / "ck2", progress=False)


def test_main_refuses_a_dataset_without_a_finetune_section(tmp_path, capsys):
    params = Path(__file__).parents[1] / "fixtures" / "params-training-micro.yaml"
    code = finetune.main(
        [
            "kinetics",
            "--pretrained",
            "p",
            "--shards",
            "s",
            "--out",
            "o",
            "--checkpoints",
            "c",
            "--params",
            str(params),
        ]
    )
    assert code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"{params}: finetune.kinetics: not defined (fine-tuned datasets: charades, ssv2)"
    )


def test_prepare_model_keeps_the_gate_of_a_scaled_model(tmp_path):
    """A model folder written after image-to-video scaling (gate, linear width map) reloads and
    fine-tunes with its structure and weights; only the heads are new."""
    from tubevit.config.model import ModelConfig
    from tubevit.model.convert import scale_image_to_video
    from tubevit.model.tubevit import create_model

    torch.manual_seed(0)
    small = create_model("nano", "embedded", {"kinetics": 5})
    large = create_model("tiny", "embedded", {"kinetics": 5})
    scale_image_to_video(small, large, 10)
    with torch.no_grad():
        large.gate.alpha.fill_(0.25)
    cfg = ModelConfig(variant="tiny", tubes="embedded")
    bundle = training.ModelBundle(
        large, cfg, {"kinetics": 5}, {"kinetics": list("abcde")}, {"kinetics": {"frames": 8, "size": 64}},
        {"kinetics": False},
    )  # fmt: skip
    training.save_model(tmp_path / "scaled", bundle)
    loaded = training.load_model(tmp_path / "scaled")
    model = finetune.prepare_model(loaded, "ssv2", 10, micro_params().finetune["ssv2"])
    assert model.gate_index == 10 and model.gate.alpha.item() == 0.25
    assert model.tube_proj.weight.shape == (192, 64)
    state, source = model.state_dict(), large.state_dict()
    assert all(torch.equal(state[k], source[k]) for k in source if not k.startswith("heads."))
    assert {k for k in state if k.startswith("heads.")} == {"heads.ssv2.weight", "heads.ssv2.bias"}
