"""The training loop: accumulation, callbacks, schedule, frozen parameters, errors, checkpoints, resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tubevit.config.train import OptimConfig
from tubevit.train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint
from tubevit.train.loop import Callback, NonFiniteLossError, train
from tubevit.train.optim import lr_factor

from .helpers import OPTIM, StandIn, joint_batches, make_batch, model_input, objectives


def fresh(seed: int = 0, dropout: float = 0.0) -> StandIn:
    torch.manual_seed(seed)
    return StandIn(dropout=dropout)


class Recorder(Callback):
    def __init__(self):
        self.events: list[tuple] = []

    def on_train_start(self, step, steps):
        self.events.append(("start", step, steps))

    def on_eta(self, step, seconds_per_step, seconds_left):
        self.events.append(("eta", step, seconds_per_step, seconds_left))

    def on_step(self, step, metrics):
        self.events.append(("step", step, dict(metrics)))

    def on_eval(self, step, metrics):
        self.events.append(("eval", step, dict(metrics)))

    def on_checkpoint(self, step, path):
        self.events.append(("checkpoint", step, path))

    def on_train_end(self, step):
        self.events.append(("end", step))

    def of(self, kind):
        return [e[1:] for e in self.events if e[0] == kind]


def test_accumulation_equals_one_large_batch():
    def small(start):
        k = start
        while True:
            yield make_batch("kinetics", 2 * k, 4)
            yield make_batch("kinetics", 2 * k + 1, 4)
            k += 1

    def large(start):
        k = start
        while True:
            a, b = make_batch("kinetics", 2 * k, 4), make_batch("kinetics", 2 * k + 1, 4)
            yield {
                "video": torch.cat([a["video"], b["video"]]),
                "label": torch.cat([a["label"], b["label"]]),
                "dataset": "kinetics",
            }
            k += 1

    m1, m2 = fresh(), fresh()
    train(m1, small, objectives(), OPTIM, 5, accum_steps=2)
    train(m2, large, objectives(), OPTIM, 5, accum_steps=1)
    for (name, a), b in zip(m1.named_parameters(), m2.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(m1.heads["kinetics"].weight, fresh().heads["kinetics"].weight)


def test_callbacks_metrics_schedule_and_evaluation():
    rec = Recorder()
    seen_modes = []

    def evaluate(model, step):
        seen_modes.append(model.training)
        batch = make_batch("kinetics", 10_000 + step, 256)
        acc = (model(model_input(batch), "kinetics").argmax(1) == batch["label"]).float().mean().item()
        return {"top1": acc}

    steps = 80
    model = fresh()
    result = train(
        model,
        joint_batches(16, 1),
        objectives(),
        OptimConfig(lr=5e-2, weight_decay=0.0, warmup_steps=4),
        steps,
        evaluate=evaluate,
        eval_every=40,
        callbacks=[rec],
        eta_steps=3,
    )
    assert rec.events[0] == ("start", 0, steps) and rec.events[-1] == ("end", steps)
    logged = rec.of("step")
    assert [s for s, _ in logged] == list(range(1, steps + 1))
    for step, metrics in logged:
        assert set(metrics) == {"loss", "lr", "grad_norm", "clips_per_s", "seconds", "dataset"}
        assert metrics["lr"] == pytest.approx(5e-2 * lr_factor(step - 1, 4, steps))
        assert metrics["clips_per_s"] == pytest.approx(16 / metrics["seconds"])
        assert metrics["loss"] > 0 and metrics["grad_norm"] > 0
    assert {m["dataset"] for _, m in logged} == {"kinetics", "imagenet"}
    (eta,) = rec.of("eta")
    assert eta[0] == 4 and eta[1] > 0 and eta[2] == pytest.approx(eta[1] * (steps - 4))
    assert [s for s, _ in rec.of("eval")] == [40, 80]
    assert seen_modes == [False, False] and model.training
    assert result.step == steps and result.start_step == 0
    assert result.eval_metrics == rec.of("eval")[-1][1]
    assert result.eval_metrics["top1"] > 0.7  # 5 classes: chance is 0.2; it learned (0.84 measured)
    assert result.metrics == logged[-1][1]
    assert rec.of("checkpoint") == [] and result.checkpoint is None


def test_frozen_parameters_stay_and_are_not_optimised():
    model = fresh()
    model.stem3d.requires_grad_(False)
    model.norm.requires_grad_(False)
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    train(model, joint_batches(8, 1), objectives(), OPTIM, 4)
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert not torch.equal(model.mlp[0].weight, fresh().mlp[0].weight)


class Exploding(StandIn):
    """Returns NaN logits for kinetics from the 3rd forward pass on."""

    calls = 0

    def forward(self, x, dataset):
        self.calls += 1
        out = super().forward(x, dataset)
        return out * float("nan") if self.calls >= 3 else out


def test_non_finite_loss_names_step_and_dataset(tmp_path):
    torch.manual_seed(0)
    model = Exploding()
    snapshots = {}

    class Snap(Callback):
        def on_step(self, step, metrics):
            snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}

    batches = joint_batches(4, 1, weights=(("kinetics", 1.0),))
    with pytest.raises(NonFiniteLossError, match=r"step 2: loss is nan on dataset 'kinetics'") as err:
        train(
            model,
            batches,
            objectives(),
            OPTIM,
            5,
            callbacks=[Snap()],
            checkpoint_dir=tmp_path,
            checkpoint_every=1,
        )
    assert (err.value.step, err.value.dataset) == (2, "kinetics")
    assert sorted(snapshots) == [1, 2]
    for k, v in model.state_dict().items():  # the failing step did not update the weights
        assert torch.equal(v, snapshots[2][k]), k
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash="")["step"] == 2


def test_batch_contract_errors():
    def mixed(start):
        yield make_batch("kinetics", 0, 2)
        yield make_batch("imagenet", 1, 2)

    with pytest.raises(
        ValueError,
        match=r"step 0: the micro-batches of one optimiser step mix datasets \['kinetics', 'imagenet'\]",
    ):
        train(fresh(), mixed, objectives(), OPTIM, 2, accum_steps=2)

    def short(start):
        yield make_batch("kinetics", 0, 2)

    with pytest.raises(RuntimeError, match="step 1: the batch iterator ended after 0 of 1 micro-batches"):
        train(fresh(), short, objectives(), OPTIM, 3)

    def floats(start):
        yield {**make_batch("kinetics", 0, 2), "video": torch.zeros(2, 3, 4, 4, 4)}

    with pytest.raises(TypeError, match=r"step 0: batch 'video' of dataset 'kinetics' is torch.float32; the"):
        train(fresh(), floats, objectives(), OPTIM, 1)
    with pytest.raises(ValueError, match="train: accum_steps must be >= 1, got 0"):
        train(fresh(), short, objectives(), OPTIM, 3, accum_steps=0)
    with pytest.raises(KeyError, match="step 0: no objective for dataset 'kinetics'; have \\['imagenet'\\]"):
        train(
            fresh(),
            joint_batches(2, 1, weights=(("kinetics", 1.0),)),
            {"imagenet": objectives()["imagenet"]},
            OPTIM,
            1,
        )


class StopAt(Callback):
    """Simulates a crash: raises after optimiser step ``step`` (its checkpoint, if due, is not written)."""

    def __init__(self, step):
        self.step = step

    def on_step(self, step, metrics):
        if step == self.step:
            raise KeyboardInterrupt(f"stop at {step}")


def run(tmp: Path | None, steps: int = 7, stop: int | None = None, seed: int = 0, hash_: str = "h"):
    model = fresh(seed=seed, dropout=0.3)
    calls = [StopAt(stop)] if stop else []
    rec = Recorder()
    result = train(
        model,
        joint_batches(6, 2),
        objectives(label_smoothing=0.1, mixup=0.4),
        OPTIM,
        steps,
        accum_steps=2,
        seed=3,
        checkpoint_dir=tmp,
        checkpoint_every=2,
        config_hash=hash_,
        callbacks=[*calls, rec],
    )
    return model, result, rec


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(tmp_path):
    reference, _, _ = run(None)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, stop=5)  # steps 1..5 done, checkpoint of step 4 on disk
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME, config_hash="h")["step"] == 4
    resumed, result, rec = run(tmp_path, seed=99)  # another init: the checkpoint must overwrite it
    assert result.start_step == 4 and result.step == 7
    assert rec.events[0] == ("start", 4, 7)
    assert [s for s, _ in rec.of("step")] == [5, 6, 7]
    assert [s for s, _ in rec.of("checkpoint")] == [6, 7]
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # a finished run resumes to a no-op
    again, result, rec = run(tmp_path, seed=5)
    assert (result.start_step, result.step) == (7, 7) and rec.of("step") == []
    assert all(
        torch.equal(a, b)
        for a, b in zip(again.state_dict().values(), resumed.state_dict().values(), strict=True)
    )


def test_checkpoint_contents_and_config_hash_refusal(tmp_path):
    model, result, rec = run(tmp_path, steps=4)
    path = tmp_path / CHECKPOINT_NAME
    assert result.checkpoint == path and [s for s, _ in rec.of("checkpoint")] == [2, 4]
    assert [p.name for p in tmp_path.iterdir()] == [CHECKPOINT_NAME]  # only the latest, no temporaries
    state = torch.load(path, weights_only=True)
    assert state["step"] == 4 and state["data_position"] == 8 and state["world_size"] == 1
    assert state["config_hash"] == "h"
    assert set(state["model"]) == set(model.state_dict()) and "pos_embed_cache" not in state["model"]
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    (rng,) = state["rng"]
    assert set(rng) == {"torch", "cuda", "python", "numpy"} and rng["numpy"]["bit_generator"] == "PCG64"
    assert state["scheduler"]["last_epoch"] == 4
    assert len(state["optimizer"]["state"]) == sum(1 for p in model.parameters() if p.requires_grad)
    with pytest.raises(
        CheckpointError, match=r"config hash h, but the current config hashes to other; the params changed"
    ):
        run(tmp_path, steps=4, hash_="other")


def test_image_to_video_scaled_model_trains_only_unfrozen_parts():
    """The loop trains what ``scale_image_to_video`` built: frozen tubes and blocks stay, the gate learns."""
    from tubevit.model.convert import scale_image_to_video
    from tubevit.model.tubevit import create_model

    from .helpers import NUM_CLASSES

    torch.manual_seed(0)
    small = create_model("nano", "embedded", {"kinetics": 5})
    large = create_model("nano", "embedded", NUM_CLASSES, embed_dim=128, depth=3)
    scale_image_to_video(small, large, scale_from_layer=2)
    frozen = {n: p.clone() for n, p in large.named_parameters() if not p.requires_grad}
    assert any(n.startswith("tokenizer.") for n in frozen) and any(n.startswith("blocks.1.") for n in frozen)
    before = {n: p.clone() for n, p in large.named_parameters() if p.requires_grad}
    batches = joint_batches(4, 1, weights=(("kinetics", 1.0),), frames=8, size=32)
    train(large, batches, objectives(), OptimConfig(lr=1e-2, warmup_steps=0), 3)
    for name, p in large.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    assert large.gate.alpha.item() != 0.0  # tanh(alpha) * z_0: alpha starts at 0 and learns
    assert not torch.equal(large.blocks[2].mlp.fc1.weight, before["blocks.2.mlp.fc1.weight"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_bf16_steps_run_and_learn():
    model = fresh()
    rec = Recorder()
    train(model, joint_batches(16, 1), objectives(), OPTIM, 20, device="cuda", callbacks=[rec])
    assert next(model.parameters()).device.type == "cuda"
    losses = [m["loss"] for _, m in rec.of("step")]
    assert all(map(math.isfinite, losses)) and min(losses[-5:]) < losses[0]
