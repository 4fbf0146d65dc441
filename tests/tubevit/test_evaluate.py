"""Multi-view aggregation, top-k, per-class accuracy, confusion matrix, Charades mAP (vs scikit-learn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from tubevit.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from tubevit.evaluate import (
    aggregate,
    charades_map,
    confusion_matrix,
    gather_views,
    multilabel_metrics,
    per_class_accuracy,
    predict,
    shuffle_frames,
    single_label_metrics,
    static_frames,
    topk_accuracy,
)


def test_aggregation_rules():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0]]])  # (N=1, V=2, K=2)
    torch.testing.assert_close(aggregate(logits, multilabel=False), torch.tensor([[0.5, 0.5]]))
    sig = torch.sigmoid(logits[0])
    torch.testing.assert_close(aggregate(logits, True, "max"), sig.amax(0, keepdim=True))
    torch.testing.assert_close(aggregate(logits, True, "mean"), sig.mean(0, keepdim=True))
    assert aggregate(logits, True, "max")[0, 0].item() == pytest.approx(0.75)
    assert aggregate(logits, True, "mean")[0, 0].item() == pytest.approx((0.5 + 0.75) / 2)


def test_topk_hand_computed():
    scores = torch.tensor([[0.1, 0.5, 0.4], [0.7, 0.2, 0.1], [0.2, 0.3, 0.5]])
    labels = torch.tensor([2, 0, 0])
    assert topk_accuracy(scores, labels, (1, 2, 5)) == {
        1: pytest.approx(1 / 3),
        2: pytest.approx(2 / 3),
        5: 1.0,
    }


def test_per_class_accuracy_and_confusion():
    preds = torch.tensor([0, 1, 1, 2, 0])
    labels = torch.tensor([0, 1, 0, 2, 0])
    assert per_class_accuracy(preds, labels, 4) == [pytest.approx(2 / 3), 1.0, 1.0, None]
    assert confusion_matrix(preds, labels, 3) == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]
    metrics = single_label_metrics(torch.nn.functional.one_hot(preds, 3).float(), labels, 3)
    assert metrics["top1"] == pytest.approx(0.8) and metrics["top5"] == 1.0
    assert metrics["confusion"] == [[2, 1, 0], [0, 1, 0], [0, 0, 1]]


def test_map_hand_computed():
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.7, 0.3], [0.6, 0.4]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    # class 0: positives at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: no positive, left out.
    # row 1 and row 3 have no label: scored -inf, so class 0's ranking becomes rows 0, 2 -> AP 1.
    value, ap = charades_map(scores, labels)
    assert ap[0] == pytest.approx(1.0) and math.isnan(ap[1]) and value == pytest.approx(1.0)
    labels = np.array([[1, 0], [0, 1], [1, 0], [0, 1]])  # no empty rows now
    value, ap = charades_map(scores, labels)
    assert ap[0] == pytest.approx((1 + 2 / 3) / 2)
    assert ap[1] == pytest.approx((1 / 1 + 2 / 3) / 2)  # class 1 ranks rows 3, 2, 1, 0: hits at 1 and 3
    assert value == pytest.approx((1 + 2 / 3) / 2)
    assert multilabel_metrics(torch.tensor(scores), torch.tensor(labels))["per_class_ap"] == [
        pytest.approx(5 / 6),
        pytest.approx(5 / 6),
    ]


def test_map_matches_sklearn_on_random_data():
    rng = np.random.default_rng(0)
    for _ in range(5):
        n, k = 60, 12
        labels = (rng.random((n, k)) < 0.2).astype(int)
        labels[np.arange(n), rng.integers(0, k, n)] = 1  # no empty rows
        labels[rng.integers(0, n, k), np.arange(k)] = 1  # every class has a positive
        scores = rng.random((n, k))  # continuous: no ties
        value, ap = charades_map(scores, labels)
        expected = [average_precision_score(labels[:, c], scores[:, c]) for c in range(k)]
        np.testing.assert_allclose(ap, expected, rtol=1e-12)
        assert value == pytest.approx(average_precision_score(labels, scores, average="macro"), rel=1e-12)


def test_map_errors():
    with pytest.raises(ValueError, match=r"scores \(2, 3\) and labels \(2, 2\) must both be \(N, K\)"):
        charades_map(np.zeros((2, 3)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="no class has a positive"):
        charades_map(np.zeros((2, 3)), np.zeros((2, 3)))


def test_gather_views_orders_clips_and_views():
    keys = ["b", "a", "b", "a"]
    views = [1, 1, 0, 0]
    logits = torch.arange(8.0).view(4, 2)
    labels = torch.tensor([5, 7, 5, 7])
    out = gather_views(keys, views, logits, labels)
    assert out.keys == ["a", "b"]
    torch.testing.assert_close(out.logits, torch.tensor([[[6.0, 7.0], [2.0, 3.0]], [[4.0, 5.0], [0.0, 1.0]]]))
    assert out.labels.tolist() == [7, 5]
    with pytest.raises(ValueError, match="clip 'a' has 1 views, others up to 2"):
        gather_views(["a", "b", "b"], [0, 0, 1], logits[:3], labels[:3])
    with pytest.raises(ValueError, match="clip 'a': view 0 appears twice"):
        gather_views(["a", "a"], [0, 0], logits[:2], labels[:2])


def test_frame_controls():
    g = torch.Generator().manual_seed(0)
    video = torch.arange(2 * 1 * 6.0).view(2, 1, 6, 1, 1).expand(2, 1, 6, 2, 2)  # frame t of clip b = 6b + t
    shuffled = shuffle_frames(video, g)
    assert shuffled.shape == video.shape
    for b in range(2):
        assert sorted(shuffled[b, 0, :, 0, 0].tolist()) == video[b, 0, :, 0, 0].tolist()
    assert not torch.equal(shuffled, video)
    static = static_frames(video, g)
    assert static.shape == video.shape
    for b in range(2):
        frame = static[b, 0, :, 0, 0]
        assert (frame == frame[0]).all() and frame[0].item() in video[b, 0, :, 0, 0].tolist()


class Echo(torch.nn.Module):
    """Logits = the first pixel of each frame (B, T): makes predict's bookkeeping visible."""

    def forward(self, x, dataset):
        assert dataset == "ssv2" and x.dtype == torch.float32
        return x[:, 0, :, 0, 0]


def level(v: float) -> float:
    """The normalised red channel of the uint8 level ``v`` (what the model sees)."""
    return (v / 255 - IMAGENET_MEAN[0]) / IMAGENET_STD[0]


def eval_batches() -> list[dict]:
    """uint8 evaluation batches (as the loader yields them): clip k1 with views 0, 1; k0 split over 2 batches."""
    return [
        {
            "video": (torch.ones(2, 3, 2, 4, 4) * torch.tensor([10.0, 20.0]).view(2, 1, 1, 1, 1)).to(
                torch.uint8
            ),
            "label": torch.tensor([0, 0]),
            "key": ["k1", "k1"],
            "view": [0, 1],
        },
        {
            "video": torch.full((1, 3, 2, 4, 4), 30, dtype=torch.uint8),
            "label": torch.tensor([1]),
            "key": ["k0"],
            "view": [0],
        },
        {
            "video": torch.full((1, 3, 2, 4, 4), 40, dtype=torch.uint8),
            "label": torch.tensor([1]),
            "key": ["k0"],
            "view": [1],
        },
    ]


def test_predict_gathers_views_and_applies_controls():
    batches = eval_batches()
    out = predict(Echo(), batches, "ssv2")
    assert out.keys == ["k0", "k1"] and out.labels.tolist() == [1, 0]
    want = torch.tensor([[[level(30)] * 2, [level(40)] * 2], [[level(10)] * 2, [level(20)] * 2]])
    torch.testing.assert_close(out.logits, want)
    assert out.logits.device.type == "cpu"
    calls = []

    def control(video, generator):
        assert video.dtype == torch.uint8  # controls permute frames before normalisation
        calls.append(video.shape)
        return video * 0

    zeroed = predict(Echo(), batches, "ssv2", transform=control)
    assert calls == [(2, 3, 2, 4, 4), (1, 3, 2, 4, 4), (1, 3, 2, 4, 4)]
    torch.testing.assert_close(zeroed.logits, torch.full((2, 2, 2), level(0)))
    floats = [{**batches[0], "video": batches[0]["video"].float()}]
    with pytest.raises(TypeError, match=r"ssv2: evaluation: batch 'video' of dataset None is torch.float32"):
        predict(Echo(), floats, "ssv2")
    with pytest.raises(ValueError, match="ssv2: the evaluation batches were empty"):
        predict(Echo(), [], "ssv2")


def _rank_predict(rank: int, world: int, init: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        batches = eval_batches()
        mine = {0: batches[:1], 1: batches[1:], 2: []}[rank]  # rank 2 has no clip at all
        preds = predict(Echo(), mine, "ssv2")
        torch.save({"keys": preds.keys, "logits": preds.logits, "labels": preds.labels}, f"{out}.{rank}")
        dup = batches[:1] if rank < 2 else []  # the same clip on two ranks is refused, naming it
        try:
            predict(Echo(), dup, "ssv2")
        except ValueError as exc:
            torch.save({"error": str(exc)}, f"{out}.err{rank}")
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_predict_gathers_fixed_size_tensors_across_ranks(tmp_path):
    import torch.multiprocessing as mp

    world = 3
    init = f"file://{tmp_path / 'init'}"
    mp.spawn(_rank_predict, args=(world, init, str(tmp_path / "p")), nprocs=world, join=True)
    single = predict(Echo(), eval_batches(), "ssv2")
    for rank in range(world):
        got = torch.load(tmp_path / f"p.{rank}", weights_only=True)
        assert got["keys"] == single.keys == ["k0", "k1"]
        assert torch.equal(got["logits"], single.logits) and torch.equal(got["labels"], single.labels)
        err = torch.load(tmp_path / f"p.err{rank}", weights_only=True)["error"]
        assert err == "clip 'k1' was evaluated on ranks 0 and 1"
