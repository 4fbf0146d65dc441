"""torch.compile: one graph per input shape, no recompilation between image and video steps, and the fixed
position embedding never traced (it is a constant of each graph)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tubevit.model.tubevit import create_model
from tubevit.train.loop import train

from .helpers import NUM_CLASSES, OPTIM, joint_batches, objectives


@pytest.fixture
def dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()


def compiled_counts() -> tuple[int, int, int]:
    """(frames compiled, graphs, graph breaks) since the last reset."""
    return counters["frames"]["ok"], counters["stats"]["unique_graphs"], sum(counters["graph_break"].values())


def test_image_then_video_compiles_two_graphs_and_never_again(dynamo):
    torch.manual_seed(0)
    model = create_model("nano", "embedded", NUM_CLASSES)
    net = torch.compile(model, backend="eager", dynamic=False)
    inputs = [(torch.randn(2, 3, 1, 32, 32), "imagenet"), (torch.randn(2, 3, 8, 32, 32), "kinetics")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for x, name in inputs:
            net(x, name).sum().backward()
        assert compiled_counts() == (2, 2, 0)
        for x, name in inputs * 2:
            out = net(x, name)
            torch.testing.assert_close(out, model(x, name), rtol=1e-5, atol=1e-5)
    assert compiled_counts() == (2, 2, 0)  # no recompilation on the second image and video steps
    assert not [w for w in caught if "lru_cache" in str(w.message)]  # posemb's cache is not traced
    # only the model's ops are in the graphs: the sin-cos of the embedding is not traced
    assert counters["stats"]["calls_captured"] < 240


def train_joint(compile_: bool, steps: int = 6):
    torch.manual_seed(0)
    model = create_model("nano", "embedded", NUM_CLASSES)
    batches = joint_batches(4, 1, frames=8, size=32)  # steps 0..5: both datasets
    result = train(model, batches, objectives(), OPTIM, steps, compile=compile_)
    return model, result


def test_loop_compile_two_graphs_for_image_and_video_steps(dynamo, monkeypatch):
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    compiled, _ = train_joint(True)
    assert compiled_counts() == (2, 2, 0)
    reference, _ = train_joint(False)
    for (name, a), b in zip(reference.state_dict().items(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_loop_compile_with_inductor_on_the_cpu(dynamo):
    """The real backend (inductor, C++ kernels through gcc): the same graph count and the same training."""
    compiled, _ = train_joint(True, steps=4)
    assert compiled_counts() == (2, 2, 0)
    reference, _ = train_joint(False, steps=4)
    for (name, a), b in zip(reference.state_dict().items(), compiled.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
