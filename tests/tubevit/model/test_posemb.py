"""Fixed 3D sin-cos position embedding at token centres, checked against an independent computation."""

from __future__ import annotations

import math
import random

import pytest
import torch

from tubevit.model.posemb import position_embedding, sincos_3d
from tubevit.model.tubes import TubeSpec, get_tube_set, num_tokens
from tubevit.model.tubevit import create_model


def analytic_centres(spec: TubeSpec, T: int, H: int, W: int) -> list[tuple[float, float, float]]:
    """(t, y, x) centre of the union of each token's S2D parts, from first principles, row-major."""
    k, s, o, f = spec.weight_kernel, spec.stride, spec.offset, spec.s2d
    counts = []
    for a, L in enumerate((T, H, W)):
        n = 0
        while o[a] + n * s[a] + k[a] <= L:  # a position fits when its window ends inside the input
            n += 1
        counts.append(n)
    out = []
    for i in range(counts[0]):
        for j in range(counts[1]):
            for m in range(counts[2]):
                c = []
                for a, idx in enumerate((i, j, m)):
                    first = o[a] + idx * s[a]  # first pixel of part 0
                    last = first + (f[a] - 1) * (s[a] // f[a]) + k[a] - 1  # last pixel of the last part
                    c.append((first + last) / 2)
                out.append(tuple(c))
    return out


def analytic_embedding(centre: tuple[float, float, float], dim: int) -> list[float]:
    t, y, x = centre
    n = dim // 6
    row = [0.0] * dim
    for j in range(n):
        w = 1.0 / (10000.0 ** (j / n))
        row[6 * j : 6 * j + 6] = [
            math.sin(t * w),
            math.cos(t * w),
            math.sin(x * w),
            math.cos(x * w),
            math.sin(y * w),
            math.cos(y * w),
        ]
    return row


@pytest.mark.parametrize("seed", range(3))
def test_embedding_equals_sincos_of_analytic_centres(seed):
    rng = random.Random(seed)
    specs = []
    for _ in range(3):
        s2d = tuple(rng.choice([1, 2]) for _ in range(3))
        specs.append(
            TubeSpec(
                tuple(rng.randint(1, 6) for _ in range(3)),
                tuple(f * rng.randint(1, 5) for f in s2d),
                tuple(rng.randint(0, 4) for _ in range(3)),
                s2d,
            )
        )
    T, H, W = rng.randint(6, 20), rng.randint(12, 40), rng.randint(12, 40)
    dim = rng.choice([12, 64, 192, 1024])
    active = [s for s in specs if num_tokens(s, T, H, W) > 0]
    emb = position_embedding(active, T, H, W, dim)
    want = [analytic_embedding(c, dim) for s in active for c in analytic_centres(s, T, H, W)]
    assert emb.shape == (len(want), dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, torch.tensor(want, dtype=torch.float32), rtol=0, atol=2e-6)


def test_paper_embedding_at_paper_sizes():
    paper = get_tube_set("paper")
    emb = position_embedding(paper, 32, 224, 224, 768)
    want = [analytic_embedding(c, 768) for s in paper for c in analytic_centres(s, 32, 224, 224)]
    assert emb.shape == (539, 768)
    torch.testing.assert_close(emb, torch.tensor(want, dtype=torch.float32), rtol=0, atol=2e-6)


@pytest.mark.parametrize(("dim", "zeros"), [(192, 0), (384, 0), (768, 0), (1024, 4), (1280, 2)])
def test_leftover_channels_are_zero(dim, zeros):
    c = torch.tensor([[3.5, 7.5, 11.5], [0.0, 100.0, 200.0]])
    e = sincos_3d(c, dim)
    assert e.shape == (2, dim)
    assert dim - 6 * (dim // 6) == zeros
    if zeros:
        assert torch.all(e[:, 6 * (dim // 6) :] == 0)
    torch.testing.assert_close(
        e[0, :6],
        torch.tensor(
            [math.sin(3.5), math.cos(3.5), math.sin(11.5), math.cos(11.5), math.sin(7.5), math.cos(7.5)],
            dtype=torch.float64,
        ),
    )


def test_shared_centres_share_embeddings():
    # two tubes of different kernel/stride whose tokens share a centre: 1x16x16 (centre 7.5) and 1x8x8 at
    # offset 4 (centre 4 + 3.5 = 7.5)
    a = TubeSpec((1, 16, 16), (1, 16, 16))
    b = TubeSpec((1, 8, 8), (1, 16, 16), (0, 4, 4))
    emb = position_embedding((a, b), 1, 32, 32, 192)
    assert emb.shape == (8, 192)
    torch.testing.assert_close(emb[:4], emb[4:], rtol=0, atol=0)
    # an image and a video's image-tube tokens on frame 0 share centres and embeddings
    paper = get_tube_set("paper")
    img = position_embedding(paper[3:], 1, 224, 224, 768)
    vid = position_embedding(paper, 32, 224, 224, 768)
    torch.testing.assert_close(img, vid[539 - 196 :], rtol=0, atol=0)


def test_not_a_parameter_nor_in_state_dict():
    model = create_model("nano", "embedded", {"kinetics": 3})
    names = list(model.state_dict())
    assert not any("pos" in n for n in names)
    assert list(model.buffers()) == []
    # one model serves images and clips of any length: the embedding is computed per input shape
    x = position_embedding(model.tubes, 16, 64, 64, 64)
    assert x.shape == (128, 64)
    assert position_embedding(model.tubes, 16, 64, 64, 64) is x  # memoised per shape
    half = position_embedding(model.tubes, 16, 64, 64, 64, dtype=torch.bfloat16)
    assert half is position_embedding(model.tubes, 16, 64, 64, 64, dtype=torch.bfloat16)  # and per dtype
    torch.testing.assert_close(half, x.to(torch.bfloat16), rtol=0, atol=0)
    assert position_embedding(model.tokenizer.active_specs(1, 64, 64), 1, 64, 64, 64).shape == (64, 64)


def test_compiled_lookup_is_a_graph_constant():
    """Under torch.compile the embedding is computed outside the graph (no trace of the sin-cos or the
    lru_cache, no graph break): one graph, the eager values."""
    import warnings

    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    paper = get_tube_set("paper")

    def add(x):
        T, H, W = x.shape[2:]
        return x.sum() + position_embedding(paper, T, H, W, 192, dtype=x.dtype)

    compiled = torch.compile(add, backend="eager", fullgraph=True, dynamic=False)  # a break would raise
    x = torch.zeros(1, 3, 32, 224, 224)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compiled(x)
    torch.testing.assert_close(out, add(x), rtol=0, atol=0)
    assert out.shape == (539, 192)
    assert counters["stats"]["unique_graphs"] == 1 and counters["stats"]["calls_captured"] <= 3
    assert not [w for w in caught if "lru_cache" in str(w.message)]
    torch._dynamo.reset()
