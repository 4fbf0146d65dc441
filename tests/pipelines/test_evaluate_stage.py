"""The evaluate stage on micro shards: multi-view metrics, controls, plot data, the index count check."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from pipelines import evaluate, training
from tests.fixtures.training_data import micro_finetuned, micro_params, micro_pretrained, micro_shards
from tubevit.evaluate import Predictions


@pytest.fixture(scope="session")
def base(tmp_path_factory) -> Path:
    return tmp_path_factory.getbasetemp() / "training-micro"


@pytest.fixture(scope="session")
def pretrained(base) -> Path:
    return micro_pretrained(base)


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_kinetics_views_metrics_controls_and_plots(base, pretrained, tmp_path):
    shards = micro_shards(base) / "kinetics"
    metrics, plots = tmp_path / "metrics" / "kinetics.json", tmp_path / "plots"
    out = evaluate.run(micro_params(), "kinetics", pretrained, shards, metrics, plots, tmp_path / "t.json")
    written = json.loads(metrics.read_text())
    assert written == out
    assert set(written) == {
        "top1",
        "top5",
        "top1_shuffled",
        "top1_static",
        "clips",
        "views",
        "num_classes",
        "chance",
    }
    index = json.loads((shards / "val" / "index.json").read_text())
    total, k = index["total"], len(index["classes"])
    assert written["clips"] == total and written["views"] == 2 * 3 and written["num_classes"] == k
    assert written["chance"] == pytest.approx(1 / k)
    for key in ("top1", "top5", "top1_shuffled", "top1_static"):
        assert 0.0 <= written[key] <= 1.0 and (written[key] * total) == pytest.approx(
            round(written[key] * total)
        )
    assert written["top5"] >= written["top1"]

    per_class = _rows(plots / "per_class.csv")
    assert [r["class"] for r in per_class] == [str(c) for c in range(k)]
    assert sum(int(r["count"]) for r in per_class) == total
    assert [r["name"] for r in per_class] == index["classes"]
    confusion = _rows(plots / "confusion.csv")
    assert len(confusion) == total and set(confusion[0]) == {"key", "actual", "predicted"}
    hits = sum(r["actual"] == r["predicted"] for r in confusion)
    assert hits / total == pytest.approx(written["top1"])
    assert json.loads((tmp_path / "t.json").read_text())["clips"] == total


def test_imagenet_has_no_temporal_controls(base, pretrained, tmp_path):
    shards = micro_shards(base) / "imagenet"
    out = evaluate.run(micro_params(), "imagenet", pretrained, shards, tmp_path / "m.json", tmp_path / "p")
    assert set(out) == {"top1", "top5", "clips", "views", "num_classes", "chance"}
    assert out["views"] == 3  # images: spatial views only
    assert out["num_classes"] == 6


def test_charades_map_and_per_class_ap(base, pretrained, tmp_path):
    shards = micro_shards(base) / "charades"
    model = micro_finetuned(base, "charades")
    out = evaluate.run(micro_params(), "charades", model, shards, tmp_path / "m.json", tmp_path / "p")
    assert set(out) == {"mAP", "mAP_shuffled", "mAP_static", "clips", "views", "num_classes", "chance"}
    assert 0.0 < out["mAP"] <= 1.0 and 0.0 < out["chance"] < 1.0
    rows = _rows(tmp_path / "p" / "per_class.csv")
    assert len(rows) == 12 and set(rows[0]) == {"class", "name", "count", "ap"}
    aps = [float(r["ap"]) for r in rows if r["ap"]]
    assert all(int(r["count"]) == 0 for r in rows if not r["ap"])
    assert sum(aps) / len(aps) == pytest.approx(out["mAP"], abs=1e-6)
    assert not (tmp_path / "p" / "confusion.csv").exists()


def test_missing_clips_are_an_error(base, pretrained, tmp_path):
    """The evaluated count is checked against index.json: a shard removed from disk is caught."""
    src = micro_shards(base) / "kinetics"
    shards = tmp_path / "kinetics"
    shutil.copytree(src, shards)
    index = json.loads((shards / "val" / "index.json").read_text())
    index["total"] += 1
    (shards / "val" / "index.json").write_text(json.dumps(index))
    with pytest.raises(
        ValueError, match=f"evaluation saw {index['total'] - 1} samples, the index lists {index['total']}"
    ):
        evaluate.run(micro_params(), "kinetics", pretrained, shards, tmp_path / "m.json", None)
    assert not (tmp_path / "m.json").exists()


def test_a_model_without_the_head_is_refused(base, pretrained, tmp_path):
    with pytest.raises(KeyError, match="no head for 'ssv2'"):
        evaluate.run(
            micro_params(), "ssv2", pretrained, micro_shards(base) / "ssv2", tmp_path / "m.json", None
        )


def test_metrics_from_predictions_against_hand_counts():
    logits = torch.tensor(
        [
            [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
            [[0.0, 0.0, 3.0], [0.0, 0.0, 3.0]],
            [[0.0, 1.0, 0.0], [0.0, 1.0, 0.0]],
        ]
    )  # (N=3, V=2, K=3)
    preds = Predictions(keys=["a", "b", "c"], logits=logits, labels=torch.tensor([0, 2, 0]))
    result = evaluate.metrics_from_predictions(preds, False, 3)
    assert result["top1"] == pytest.approx(2 / 3)  # a: mean softmax favours 0; b: 2; c: 1 (wrong)
    assert result["per_class_accuracy"] == [pytest.approx(0.5), None, pytest.approx(1.0)]


def test_params_evaluate_views_are_used(base, pretrained, tmp_path):
    params = micro_params()
    one = dataclasses.replace(
        params, evaluate=dataclasses.replace(params.evaluate, temporal_views=1, spatial_views=1)
    )
    out = evaluate.run(
        one,
        "kinetics",
        pretrained,
        micro_shards(base) / "kinetics",
        tmp_path / "m.json",
        None,
        controls=False,
    )
    assert out["views"] == 1 and "top1_shuffled" not in out
    assert training.load_model(pretrained).inputs["kinetics"] == {
        "frames": 8,
        "size": 64,
        "fps": 15.0,
        "short_side": 64,
    }
