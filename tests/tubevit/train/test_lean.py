"""The lean loop: results read a step late (fused optimiser), precision, activation checkpointing."""

from __future__ import annotations

import functools
import math

import pytest
import torch

from tubevit.model.tubevit import create_model
from tubevit.train import loop
from tubevit.train.checkpoint import CHECKPOINT_NAME, load_checkpoint
from tubevit.train.loop import Callback, NonFiniteLossError, train
from tubevit.train.optim import build_optimizer
from tubevit.train.precision import autocast, input_dtype, resolve_precision

from .helpers import NUM_CLASSES, OPTIM, StandIn, joint_batches, objectives
from .test_loop import Exploding, Recorder, fresh


@pytest.fixture
def lagged(monkeypatch):
    """The CUDA path on the CPU: a fused AdamW, so the loop reads each step's results one step late."""
    monkeypatch.setattr(loop, "build_optimizer", functools.partial(build_optimizer, fused=True))


def test_fused_only_on_cuda_parameters():
    assert not build_optimizer(fresh(), OPTIM).defaults["fused"]
    assert build_optimizer(fresh(), OPTIM, fused=True).defaults["fused"]


class Snapshots(Callback):
    """The weights as they are when ``on_step`` is called, and the order of the events."""

    def __init__(self, model):
        self.model, self.weights, self.events, self.forwards = model, {}, [], {}

    def on_step(self, step, metrics):
        self.weights[step] = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.events.append(("step", step, metrics["loss"]))
        self.forwards[step] = getattr(self.model, "forwards", None)

    def on_eval(self, step, metrics):
        self.events.append(("eval", step))

    def on_checkpoint(self, step, path):
        self.events.append(("checkpoint", step))

    def on_eta(self, step, seconds_per_step, seconds_left):
        self.events.append(("eta", step))


class Counting(StandIn):
    forwards = 0

    def forward(self, x, dataset):
        self.forwards += 1
        return super().forward(x, dataset)


def run(tmp_path, steps=9):
    torch.manual_seed(0)
    model = Counting(dropout=0.2)
    snaps = Snapshots(model)
    train(
        model,
        joint_batches(6, 2),
        objectives(label_smoothing=0.1, mixup=0.4),
        OPTIM,
        steps,
        accum_steps=2,
        seed=3,
        checkpoint_dir=tmp_path,
        checkpoint_every=4,
        evaluate=lambda m, step: {"step": step},
        eval_every=3,
        callbacks=[snaps],
        eta_steps=2,
    )
    return model, snaps


def test_late_results_change_nothing_but_when_they_arrive(tmp_path, monkeypatch):
    eager_model, eager = run(tmp_path / "eager")
    monkeypatch.setattr(loop, "build_optimizer", functools.partial(build_optimizer, fused=True))
    late_model, late = run(tmp_path / "late")
    # every step is reported once, in order, and before the evaluation / checkpoint / ETA of its step
    assert [e for e in late.events if e[0] != "step"] == [e for e in eager.events if e[0] != "step"]
    assert [e[:2] for e in late.events] == [e[:2] for e in eager.events]
    assert [e[1] for e in late.events if e[0] == "step"] == list(range(1, 10))
    # the same training (fused AdamW differs from the for-loop one only by float rounding)
    late_losses = [e[2] for e in late.events if e[0] == "step"]
    eager_losses = [e[2] for e in eager.events if e[0] == "step"]
    assert late_losses == pytest.approx(eager_losses, rel=1e-4)
    for (name, a), b in zip(eager_model.state_dict().items(), late_model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)
    # when: 2 micro-batches per step; a late report comes after the next step's forward passes, except at
    # the steps where the loop reads at once (ETA 3, evaluations 3 6 9, checkpoints 4 8, the end)
    assert eager.forwards == {k: 2 * k for k in range(1, 10)}
    assert late.forwards == {k: 2 * k if k in (3, 4, 6, 8, 9) else 2 * k + 2 for k in range(1, 10)}
    # a late report (during the next step, after its backward pass) still comes before that step's update:
    # the model a callback sees is the model of the reported step
    for step in range(1, 10):
        for k, v in late.weights[step].items():
            torch.testing.assert_close(v, eager.weights[step][k], rtol=1e-4, atol=1e-5, msg=f"{step} {k}")


def test_late_non_finite_loss_names_its_step_and_skips_its_update(lagged):
    torch.manual_seed(0)
    model = Exploding()
    rec = Recorder()
    snaps = Snapshots(model)
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss is nan on dataset 'kinetics'") as err:
        train(
            model,
            joint_batches(4, 1, weights=(("kinetics", 1.0),)),
            objectives(),
            OPTIM,
            6,
            callbacks=[rec, snaps],
        )
    assert (err.value.step, err.value.dataset) == (2, "kinetics")
    assert [s for s, _ in rec.of("step")] == [1, 2]  # detected while step 3 ran, before its update
    for k, v in model.state_dict().items():  # neither the bad step nor the next one changed the weights
        assert torch.equal(v, snaps.weights[2][k]), k


def test_late_non_finite_loss_is_caught_before_a_checkpoint(tmp_path, lagged):
    torch.manual_seed(0)
    model = Exploding()
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss is nan"):
        train(
            model,
            joint_batches(4, 1, weights=(("kinetics", 1.0),)),
            objectives(),
            OPTIM,
            6,
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
        )
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash="")
    assert state["step"] == 2 and all(torch.isfinite(v).all() for v in state["model"].values())


def test_precision_names_and_dtypes():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert (resolve_precision("auto", cpu), resolve_precision("auto", cuda)) == ("fp32", "bf16")
    assert resolve_precision("fp16", cpu) == "fp16"
    assert [input_dtype(p) for p in ("bf16", "fp16", "fp32")] == [
        torch.bfloat16,
        torch.float16,
        torch.float32,
    ]
    with pytest.raises(ValueError, match=r"precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        resolve_precision("fp8", cpu)
    with autocast(cpu, "bf16"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with autocast(cpu, "fp32"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


class InputDtype(StandIn):
    """Records the dtype of every model input."""

    def __init__(self):
        super().__init__()
        self.dtypes = []

    def forward(self, x, dataset):
        self.dtypes.append(x.dtype)
        return super().forward(x, dataset)


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_reduced_precision_trains_and_fp16_resumes_its_scaler(tmp_path, precision, dtype):
    torch.manual_seed(0)
    model = InputDtype()
    rec = Recorder()
    train(
        model,
        joint_batches(16, 1),
        objectives(),
        OptimConfig_fast(),
        30,
        precision=precision,
        checkpoint_dir=tmp_path,
        checkpoint_every=10,
        callbacks=[rec],
    )
    assert set(model.dtypes) == {dtype}
    losses = [m["loss"] for _, m in rec.of("step")]
    assert all(map(math.isfinite, losses)) and sum(losses[-5:]) < sum(losses[:5])
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash="")
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0 and "_growth_tracker" in state["scaler"]
    else:
        assert "scaler" not in state


def OptimConfig_fast():
    from tubevit.config.train import OptimConfig

    return OptimConfig(lr=2e-2, weight_decay=0.0, warmup_steps=2)


def test_grad_checkpointing_recomputes_blocks_and_changes_nothing():
    def trained(checkpointing: bool):
        torch.manual_seed(0)
        model = create_model("nano", "embedded", NUM_CLASSES, drop_path_rate=0.2)
        calls = []
        model.blocks[0].register_forward_pre_hook(lambda *a: calls.append(1))
        batches = joint_batches(4, 1, frames=8, size=32)
        train(model, batches, objectives(), OPTIM, 3, grad_checkpointing=checkpointing)
        return model, len(calls)

    plain, plain_calls = trained(False)
    ckpt, ckpt_calls = trained(True)
    assert ckpt.grad_checkpointing and not plain.grad_checkpointing
    assert (plain_calls, ckpt_calls) == (3, 6)  # the backward pass ran each block's forward again
    for (name, a), b in zip(plain.state_dict().items(), ckpt.state_dict().values(), strict=True):
        assert torch.equal(a, b), name  # drop path's RNG is replayed: bitwise the same on the CPU
    with pytest.raises(ValueError, match=r"grad_checkpointing: StandIn has no set_grad_checkpointing\(\)"):
        train(fresh(), joint_batches(4, 1), objectives(), OPTIM, 1, grad_checkpointing=True)


class Inputs(StandIn):
    """Keeps every model input."""

    def __init__(self):
        super().__init__()
        self.inputs = []

    def forward(self, x, dataset):
        self.inputs.append(x.detach().clone())
        return super().forward(x, dataset)


def test_device_augmentation_runs_in_the_step():
    """A batch with ``aug`` (augment_on: device) is cropped, augmented and normalised by the loop."""
    from tubevit.data.augment import draw_clip_params, pack_params, to_model_input

    g = torch.Generator().manual_seed(0)
    video = torch.randint(0, 256, (3, 3, 4, 20, 24), dtype=torch.uint8, generator=g)  # padded decoded frames
    params = [draw_clip_params(100 + i, 20, 24, size=8) for i in range(3)]
    batch = {
        "video": video,
        "aug": pack_params(params),
        "label": torch.tensor([0, 1, 2]),
        "dataset": "kinetics",
        "key": ["a", "b", "c"],
    }
    torch.manual_seed(0)
    model = Inputs()
    train(model, lambda start: iter([batch] * 2), objectives(), OPTIM, 2)
    want = to_model_input(batch, torch.device("cpu"), torch.float32)
    assert want.shape == (3, 3, 4, 8, 8) and len(model.inputs) == 2
    for got in model.inputs:
        assert torch.equal(got, want)
