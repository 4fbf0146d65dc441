"""WebDataset loaders: batch contents, sampled frames, determinism, resume, exact evaluation, joint batches."""

from __future__ import annotations

import functools
import importlib
import json
from dataclasses import replace
from pathlib import Path

import fsspec
import numpy as np
import pytest
import torch

from pipelines.shard import read_tar_samples
from pipelines.shard import run as shard
from tests.tubevit.data.clips import decoded_indices, make_image_set, make_video_set, write_tar
from tubevit.config.data import LoaderConfig, ShardConfig
from tubevit.data.augment import CPU_AUTO_CHOICE, augment_batch, augment_clip, to_model_input, unpack_params
from tubevit.data.shards import (
    JointBatches,
    NoSamplesError,
    check_complete,
    dataset_for_step,
    eval_loader,
    read_index,
    register_fsspec_handlers,
    shard_urls,
    step_counts,
    train_loader,
    window_classes,
)
from tubevit.data.video import eval_indices

# no augmentation, full-frame crop: the loader's output frames can be read back as indices
PLAIN = LoaderConfig(
    frames=8,
    size=24,
    batch_size=4,
    workers=0,
    shuffle_buffer=8,
    crop_scale=(1.0, 1.0),
    crop_ratio=(64 / 48, 64 / 48),
    randaugment=False,
    augment_on="cpu",
)
AUG = replace(PLAIN, crop_scale=(0.25, 1.0), crop_ratio=(0.75, 4 / 3), randaugment=True)
DEVICE = replace(AUG, augment_on="device")
CHARADES_ACTIONS = [[0, 0.0, 1.5], [1, 2.0, 3.0], [2, 4.0, 5.0]]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """shards/{kinetics,charades,imagenet}/<split>/ made by the shard stage from generated media."""
    base = tmp_path_factory.mktemp("data")
    kinetics = [
        {"id": f"k{i:02d}", "split": "train" if i < 12 else "val", "frames": 12 + i % 9, "label": i % 3}
        for i in range(22)
    ]
    make_video_set(base / "videos" / "kinetics", kinetics, ["a", "b", "c"], fps=15.0)
    charades = [
        {
            "id": f"C{i}",
            "split": "train" if i < 4 else "val",
            "frames": 30,
            "labels": [0, 1, 2],
            "actions": CHARADES_ACTIONS,
        }
        for i in range(6)
    ]
    charades.append({"id": "C9", "split": "val", "frames": 30})  # a video with no actions
    make_video_set(base / "videos" / "charades", charades, ["x", "y", "z", "w"], fps=6.0)
    mixed = [  # two frame sizes in one set: device batches are zero-padded to the larger
        {"id": f"m{i}", "split": "train", "frames": 10 + i, "label": i % 3}
        | ({"height": 32, "width": 40} if i % 2 else {})
        for i in range(8)
    ]
    make_video_set(base / "videos" / "mixed", mixed, ["a", "b", "c"], fps=15.0)
    images = [{"id": f"n{i}", "split": "train", "label": i % 2, "value": 10 * i} for i in range(8)]
    make_image_set(base / "videos" / "imagenet", images, ["n01", "n02"])
    for ds in ("kinetics", "charades", "imagenet", "mixed"):
        shard(
            ds,
            ["train", "val"] if ds != "mixed" else ["train"],
            ShardConfig(target_bytes=1 << 20, min_shards=4),
            base / "videos" / ds,
            base / "shards" / ds,
        )
    return base / "shards"


def _metas(root: Path, ds: str, split: str) -> dict[str, dict]:
    index = read_index(root / ds / split / "index.json")
    return {
        k: json.loads(s["json"])
        for e in index["shards"]
        for k, s in read_tar_samples(root / ds / split / e["name"]).items()
    }


def _frames(video: torch.Tensor) -> np.ndarray:
    """uint8 (C, T, H, W) -> uint8 (T, H, W, C) (for reading frame indices back)."""
    assert video.dtype == torch.uint8
    return video.permute(1, 2, 3, 0).numpy()


def _loader(root, lcfg=PLAIN, ds="kinetics", **kw):
    args = {"dataset": ds, "num_classes": 3, "seed": 0, "epoch_batches": 3, **kw}
    return train_loader(shard_urls(root / ds / "train" / "index.json"), lcfg, **args)


def test_train_batches_hold_the_right_clips_and_labels(root):
    metas = _metas(root, "kinetics", "train")
    batches = list(_loader(root))
    assert len(batches) == 3
    for batch in batches:
        assert set(batch) == {"video", "label", "dataset", "key"} and batch["dataset"] == "kinetics"
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape == (4, 3, 8, 24, 24)
        assert batch["label"].dtype == torch.int64 and batch["label"].tolist() == [
            metas[k]["label"] for k in batch["key"]
        ]
        for key, video in zip(batch["key"], batch["video"], strict=True):
            idx = decoded_indices(_frames(video))
            n = metas[key]["frames"]
            assert idx == list(range(idx[0], idx[0] + 8)) and 0 <= idx[0] <= n - 8, (key, idx, n)


def test_determinism_epochs_and_worker_independent_augmentation(root):
    def run(**kw):
        return list(_loader(root, AUG, epoch_batches=4, **kw))

    a, b = run(), run()
    assert all(
        torch.equal(x["video"], y["video"]) and x["key"] == y["key"] for x, y in zip(a, b, strict=True)
    )
    other = run(seed=1)
    assert [x["key"] for x in a] != [x["key"] for x in other]
    # with 2 workers the order differs, but a key's clip (window + augmentation) is the same
    two = list(_loader(root, replace(AUG, workers=2), epoch_batches=4))
    by_key = {k: v for x in a for k, v in zip(x["key"], x["video"], strict=True)}
    common = [(k, v) for x in two for k, v in zip(x["key"], x["video"], strict=True) if k in by_key]
    assert common, "no key in common between the two runs"
    assert all(torch.equal(v, by_key[k]) for k, v in common)
    # each iter() of a loader is the next epoch; epoch 1 equals a loader built at epoch 1
    loader = _loader(root, AUG)
    first, second = list(loader), list(loader)
    assert [x["key"] for x in first] == [x["key"] for x in a[:3]]
    epoch1 = list(_loader(root, AUG, epoch=1))
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(second, epoch1, strict=True))
    assert not torch.equal(first[0]["video"], second[0]["video"])


def test_resume_skips_consumed_batches_with_two_workers(root):
    lcfg = replace(PLAIN, workers=2, batch_size=2)
    full = list(_loader(root, lcfg, epoch_batches=7))
    resumed = list(_loader(root, lcfg, epoch_batches=7, start_batch=3))
    assert len(full) == 7 and len(resumed) == 4
    assert [x["key"] for x in resumed] == [x["key"] for x in full[3:]]
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(resumed, full[3:], strict=True))
    at_end = _loader(root, lcfg, epoch_batches=7, start_batch=7)
    assert list(at_end) == [] and len(list(at_end)) == 7  # then the next epoch, in full


def test_ranks_get_equal_batch_counts_and_different_data(root):
    ranks = [list(_loader(root, epoch_batches=2, rank=r, world_size=2)) for r in (0, 1)]
    assert [len(r) for r in ranks] == [2, 2]
    assert [b["key"] for b in ranks[0]] != [b["key"] for b in ranks[1]]


def test_evaluation_reads_every_sample_once_across_ranks_and_workers(root):
    index = root / "kinetics" / "val" / "index.json"
    assert len(read_index(index)["shards"]) == 4
    metas = _metas(root, "kinetics", "val")
    lcfg = replace(PLAIN, workers=2, batch_size=3, temporal_views=2, spatial_views=1)
    keys, views = [], {}
    for rank in (0, 1):
        for batch in eval_loader(
            shard_urls(index), lcfg, dataset="kinetics", num_classes=3, rank=rank, world_size=2
        ):
            assert batch["dataset"] == "kinetics" and batch["video"].shape[1:] == (3, 8, 24, 24)
            assert batch["label"].tolist() == [metas[k]["label"] for k in batch["key"]]
            keys += batch["key"]
            for key, view, video in zip(batch["key"], batch["view"], batch["video"], strict=True):
                views[(key, view)] = decoded_indices(_frames(video))
    check_complete(keys, index, views=2)
    assert sorted(set(keys)) == sorted(metas) and len(keys) == 20
    for (key, view), idx in views.items():
        assert idx == eval_indices(metas[key]["frames"], 8, 2)[view].tolist()


def test_check_complete_names_the_problem():
    with pytest.raises(ValueError, match=r"wrong number of times \(expected 1\): \['000000002'\]"):
        check_complete(["000000001", "000000002", "000000002"], 2)
    with pytest.raises(ValueError, match="evaluation saw 1 samples, the index lists 2"):
        check_complete(["000000001"], 2)


def test_charades_labels_window_for_training_video_level_for_evaluation(root):
    metas = _metas(root, "charades", "train")
    seen = set()
    for batch in _loader(root, ds="charades", num_classes=4, multilabel=True, epoch_batches=4):
        assert batch["label"].dtype == torch.float32 and batch["label"].shape == (4, 4)
        for key, video, label in zip(batch["key"], batch["video"], batch["label"], strict=True):
            start = decoded_indices(_frames(video))[0]
            classes = window_classes(metas[key]["actions"], start / 6.0, (start + 8) / 6.0)
            assert torch.nonzero(label).flatten().tolist() == classes
            seen.add(tuple(classes))
    assert len(seen) >= 2  # different windows give different labels
    assert window_classes(CHARADES_ACTIONS, 1.0, 2.0) == [0] and window_classes(
        CHARADES_ACTIONS, 1.0, 2.5
    ) == [0, 1]
    val = _metas(root, "charades", "val")
    urls = shard_urls(root / "charades" / "val" / "index.json")
    labels = {}
    for batch in eval_loader(urls, PLAIN, dataset="charades", num_classes=4, multilabel=True):
        labels.update({k: v.tolist() for k, v in zip(batch["key"], batch["label"], strict=True)})
    assert set(labels) == set(val)
    for key, label in labels.items():
        want = [1.0, 1.0, 1.0, 0.0] if val[key]["id"] != "C9" else [0.0] * 4
        assert label == want


def test_images_arrive_with_one_frame(root):
    metas = _metas(root, "imagenet", "train")
    for batch in _loader(root, AUG, ds="imagenet", num_classes=2, epoch_batches=2):
        assert batch["dataset"] == "imagenet" and batch["video"].shape == (4, 3, 1, 24, 24)
        assert batch["label"].tolist() == [metas[k]["label"] for k in batch["key"]]


def test_joint_batches_follow_the_seeded_schedule(root):
    loaders = {
        "kinetics": _loader(root, epoch_batches=2),
        "imagenet": _loader(root, ds="imagenet", num_classes=2, epoch_batches=2),
    }
    weights = {"kinetics": 3.0, "imagenet": 1.0}
    joint = JointBatches(loaders, weights, seed=5, batches_per_step=2)
    batches = []
    for batch in joint:
        batches.append(batch)
        if len(batches) == 12:
            break
    names = [b["dataset"] for b in batches]
    assert names == [dataset_for_step(k // 2, weights, 5) for k in range(12)]
    assert all(b["video"].shape[2] == (1 if b["dataset"] == "imagenet" else 8) for b in batches)
    assert names[0::2] == names[1::2]  # both micro-batches of a step come from one dataset
    # the same schedule on every rank, a weighted draw, and counts for resuming
    assert [dataset_for_step(k, weights, 5) for k in range(50)] == [
        dataset_for_step(k, dict(reversed(weights.items())), 5) for k in range(50)
    ]
    counts = step_counts(weights, 5, 400)
    assert sum(counts.values()) == 400 and 250 < counts["kinetics"] < 350
    assert step_counts(weights, 5, 10, start=4) == {
        n: [dataset_for_step(k, weights, 5) for k in range(4, 10)].count(n) for n in ("imagenet", "kinetics")
    }
    with pytest.raises(ValueError, match=r"without a loader: \['ssv2'\]"):
        JointBatches(loaders, {"ssv2": 1.0}, seed=0)


def test_fsspec_urls_and_index(root):
    """A memory:// shard set read through the registered fsspec gopen handler (the s3/gs path)."""
    gopen = importlib.import_module("webdataset.gopen")  # the module (webdataset.gopen is also a function)
    register_fsspec_handlers()
    assert gopen.gopen_schemes["s3"].__name__ == "_fsspec_gopen"
    assert gopen.gopen_schemes["gs"].__name__ == "_fsspec_gopen"
    register_fsspec_handlers(["memory"])
    fs = fsspec.filesystem("memory")
    folder = root / "kinetics" / "val"
    for path in folder.iterdir():
        fs.pipe(f"/shards/kinetics/val/{path.name}", path.read_bytes())
    urls = shard_urls("memory://shards/kinetics/val/index.json")
    assert urls[0] == "memory://shards/kinetics/val/kinetics-val-000000.tar"
    keys = [k for b in eval_loader(urls, PLAIN, dataset="kinetics", num_classes=3) for k in b["key"]]
    check_complete(keys, "memory://shards/kinetics/val/index.json")


def test_shard_urls_refuse_names_that_are_not_plain_files(tmp_path):
    for bad in ("pipe:curl x.tar", "../other.tar", "-rf.tar", "sub/x.tar"):
        (tmp_path / "index.json").write_text(
            json.dumps({"shards": [{"name": bad}], "total": 1, "classes": []})
        )
        with pytest.raises(ValueError, match="refusing shard name"):
            shard_urls(tmp_path / "index.json")
    with pytest.raises(ValueError, match="refusing to read an index through a pipe"):
        shard_urls("pipe:cat index.json")


def test_decoded_cache_gives_the_same_batches_and_decodes_once(root):
    """cache_mb > 0: each video is decoded once per loader (all frames), later epochs slice it from memory;
    the batches equal those of the uncached loader, augmentation included (video and image sets)."""
    for ds, lcfg, classes in (("kinetics", AUG, 3), ("imagenet", replace(AUG, frames=1), 2)):
        plain = _loader(root, lcfg, ds=ds, num_classes=classes, epoch_batches=2)
        cached = _loader(root, replace(lcfg, cache_mb=64), ds=ds, num_classes=classes, epoch_batches=2)
        for _epoch in range(3):
            a, b = list(plain), list(cached)
            assert len(a) == len(b) == 2
            for x, y in zip(a, b, strict=True):
                assert x["key"] == y["key"] and torch.equal(x["video"], y["video"]), ds
                assert torch.equal(x["label"], y["label"])
        cache = cached.cache
        total = read_index(root / ds / "train" / "index.json")["total"]
        assert 0 < len(cache.items) <= total and cache.misses == len(cache.items), ds
        assert cache.hits + cache.misses == 3 * 2 * lcfg.batch_size, ds  # no sample decoded ahead
        assert cache.hits > 0, ds
        shapes = {v.shape[0] for v in cache.items.values()}  # whole videos (N frames), images 1 frame
        metas = _metas(root, ds, "train")
        if ds == "kinetics":
            for (_url, key), video in cache.items.items():
                assert video.dtype == np.uint8 and video.shape[0] == metas[key]["frames"]
        else:
            assert shapes == {1}
        assert cache.bytes == sum(v.nbytes for v in cache.items.values())


def test_shard_cache_replays_each_shard_and_reads_it_once(root):
    """cache_mb > 0 also keeps each shard's samples: a shard drawn again is replayed from memory (no tar
    read) with the same samples in the same order, so the batches equal the uncached loader's."""
    urls = shard_urls(root / "kinetics" / "train" / "index.json")
    plain = _loader(root, AUG, epoch_batches=2)
    cached = _loader(root, replace(AUG, cache_mb=64), epoch_batches=2)
    for _epoch in range(3):
        for x, y in zip(list(plain), list(cached), strict=True):
            assert x["key"] == y["key"] and torch.equal(x["video"], y["video"])
            assert torch.equal(x["label"], y["label"])
    shards = cached.shard_cache
    assert 0 < len(shards.items) <= len(urls) and set(shards.items) <= set(urls)
    assert shards.misses >= len(shards.items) and shards.hits > 0
    on_disk = {url: read_tar_samples(Path(url)) for url in shards.items}
    for url, samples in shards.items.items():
        assert [s["__key__"] for s in samples] == list(on_disk[url])
        for s in samples:
            d = on_disk[url][s["__key__"]]
            assert s["mp4"] == d["mp4"] and s["json"] == d["json"] and s["__url__"] == url
    size = sum(
        len(v) for ss in shards.items.values() for s in ss for v in s.values() if isinstance(v, bytes | str)
    )
    assert shards.bytes == size


def test_shard_cache_keeps_only_whole_shards_within_budget(root):
    from tubevit.data.shards import ShardCache

    url = shard_urls(root / "kinetics" / "train" / "index.json")[0]
    errors = []
    tiny = ShardCache(max_bytes=10)  # no shard fits: every draw reads the tar
    read = [s["__key__"] for s in tiny.stage(errors.append)([{"url": url}, {"url": url}])]
    keys = list(read_tar_samples(Path(url)))
    assert read == keys + keys and tiny.items == {} and (tiny.hits, tiny.misses) == (0, 2)
    cache = ShardCache(max_bytes=1 << 30)
    stream = cache.stage(errors.append)([{"url": url}])
    next(stream)  # left early (an epoch ends mid-shard): not kept
    stream.close()
    assert cache.items == {}
    assert [s["__key__"] for s in cache.stage(errors.append)([{"url": url}] * 2)] == keys + keys
    assert list(cache.items) == [url] and (cache.hits, cache.misses) == (1, 2)
    missing = ShardCache(max_bytes=1 << 30)
    assert list(missing.stage(lambda exn: errors.append(exn) or True)([{"url": url + ".gone"}])) == []
    assert missing.items == {} and len(errors) == 1 and ".gone" in str(errors[0])


def test_decoded_cache_respects_its_budget(root):
    from tubevit.data.shards import DecodedCache

    cache = DecodedCache(max_bytes=100)
    calls = []

    def decode(n):
        calls.append(n)
        return np.zeros(n, dtype=np.uint8)

    assert cache.get("u", "a", lambda: decode(60)).shape == (60,)
    assert cache.get("u", "b", lambda: decode(60)).shape == (60,)  # over budget: not kept
    cache.get("u", "a", lambda: decode(60))
    cache.get("u", "b", lambda: decode(60))
    assert calls == [60, 60, 60] and cache.bytes == 60 and list(cache.items) == [("u", "a")]
    assert (cache.hits, cache.misses) == (1, 3)
    with pytest.raises(ValueError, match="cache_mb"):
        LoaderConfig(cache_mb=-1)


# --------------------------------------------------------------------------------------------- uint8 batches
def test_batches_are_uint8_and_pinned_where_cuda_exists(root):
    val = shard_urls(root / "kinetics" / "val" / "index.json")
    batches = [
        next(iter(_loader(root, AUG))),
        next(iter(_loader(root, DEVICE))),
        next(iter(eval_loader(val, PLAIN, dataset="kinetics", num_classes=3))),
    ]
    for batch in batches:
        assert batch["video"].dtype == torch.uint8 and batch["video"].shape[:3] == (4, 3, 8)
        tensors = [batch["video"], batch["label"]] + ([batch["aug"]] if "aug" in batch else [])
        if torch.cuda.is_available():  # pinned host memory only exists with CUDA
            assert all(t.is_pinned() for t in tensors)
    assert batches[0]["video"].shape[3:] == batches[2]["video"].shape[3:] == (24, 24)
    assert batches[1]["video"].shape[3:] == (48, 64) and batches[1]["aug"].dtype == torch.float32


def test_device_batches_carry_the_frames_and_the_cpu_paths_params(root):
    """augment_on: device ships each sample's decoded window and the very params the cpu path applies:
    augment_clip of a device batch's frames with its packed params gives the cpu batch, bit for bit."""
    cpu, device = list(_loader(root, AUG)), list(_loader(root, DEVICE))
    metas = _metas(root, "kinetics", "train")
    for x, y in zip(cpu, device, strict=True):
        assert x["key"] == y["key"] and torch.equal(x["label"], y["label"])
        assert set(y) == {"video", "aug", "label", "dataset", "key"}
        params = unpack_params(y["aug"])
        assert [p.size for p in params] == [24] * 4 and all(len(p.ops) == 2 for p in params)
        for key, frames, p, want in zip(y["key"], y["video"], params, x["video"], strict=True):
            thwc = frames.permute(1, 2, 3, 0)  # (T, H, W, C): the decoded window
            idx = decoded_indices(thwc.numpy())
            assert idx == list(range(idx[0], idx[0] + 8)) and 0 <= idx[0] <= metas[key]["frames"] - 8
            assert torch.equal(augment_clip(thwc, p), want), key
    # the batched device path runs on these channels-last batches: on CPU tensors with the per-clip crop it
    # reproduces the cpu batches exactly (RandAugment included); to_model_input takes both kinds of batch
    for x, y in zip(cpu, device, strict=True):
        out = augment_batch(y["video"], y["aug"], crop="per_sample")
        assert out.shape == (4, 3, 8, 24, 24) and torch.equal(out, x["video"].float())
        for batch in (x, y):
            model_input = to_model_input(batch, "cpu")
            assert model_input.dtype == torch.float32 and model_input.shape == (4, 3, 8, 24, 24)


def test_device_batches_are_zero_padded_to_the_largest_frames(root):
    metas = _metas(root, "mixed", "train")
    sizes = set()
    for cpu, device in zip(
        _loader(root, AUG, ds="mixed", epoch_batches=4),
        _loader(root, DEVICE, ds="mixed", epoch_batches=4),
        strict=True,
    ):
        assert device["video"].shape == (4, 3, 8, 48, 64) or device["video"].shape == (4, 3, 8, 32, 40)
        h_max, w_max = device["video"].shape[3:]
        for key, frames, p, want in zip(
            device["key"], device["video"], unpack_params(device["aug"]), cpu["video"], strict=True
        ):
            h, w = metas[key]["height"], metas[key]["width"]
            sizes.add((h, w))
            assert p.top + p.height <= h and p.left + p.width <= w  # the box lies in the clip's own frames
            thwc = frames.permute(1, 2, 3, 0)
            assert not thwc[:, h:].any() and not thwc[:, :, w:].any() and (h, w) <= (h_max, w_max)
            assert torch.equal(augment_clip(thwc[:, :h, :w], p), want), key
    assert sizes == {(48, 64), (32, 40)}


def test_batches_are_the_same_with_0_or_2_workers(root):
    for lcfg in (AUG, DEVICE):
        zero = list(_loader(root, lcfg, epoch_batches=6))
        two = list(_loader(root, replace(lcfg, workers=2), epoch_batches=6))
        # batch i comes from logical worker i % 2 with 2 workers; each worker's samples are in the order
        # of a 1-worker stream of its own, so compare sample by sample through the key
        by_key = {k: v for x in zero for k, v in zip(x["key"], x["video"], strict=True)}
        common = 0
        for x in two:
            for k, v in zip(x["key"], x["video"], strict=True):
                if k in by_key:
                    common += 1
                    assert torch.equal(v, by_key[k]), (lcfg.augment_on, k)
                    assert v.dtype == torch.uint8
        assert common >= 4, lcfg.augment_on


# --------------------------------------------------------------------------------------------- bad samples
def _bad_set(root: Path, tmp: Path, every: int, member: str = "mp4") -> list[str]:
    """The kinetics train shards rewritten with every ``every``-th sample's mp4 (or json) replaced by junk."""
    index = root / "kinetics" / "train" / "index.json"
    urls, n = [], 0
    for entry in read_index(index)["shards"]:
        samples = []
        for key, members in read_tar_samples(index.parent / entry["name"]).items():
            if n % every == 0:
                junk = b"not a video " if member == "mp4" else b"{not json "
                members = {**members, member: junk + key.encode()}
            samples.append({"__key__": key, **members})
            n += 1
        urls.append(str(write_tar(tmp / entry["name"], samples)))
    return urls


def _good_keys(urls: list[str]) -> set[str]:
    return {
        k for u in urls for k, m in read_tar_samples(Path(u)).items() if not m["mp4"].startswith(b"not a")
    }


def test_undecodable_samples_are_counted_logged_and_replaced(root, tmp_path, caplog):
    urls = _bad_set(root, tmp_path, every=3)
    good = _good_keys(urls)
    loader = train_loader(urls, PLAIN, dataset="kinetics", num_classes=3, seed=0, epoch_batches=6)
    with caplog.at_level("WARNING", logger="tubevit.data.shards"):
        batches = list(loader)
    assert len(batches) == 6 and all(b["video"].shape == (4, 3, 8, 24, 24) for b in batches)
    assert all(k in good for b in batches for k in b["key"])  # a bad sample's place holds a good one
    messages = [r.getMessage() for r in caplog.records if "undecodable training sample" in r.getMessage()]
    assert loader.counts["skipped"] == len(messages) > 0
    assert all("cannot open video" in m and ".tar:" in m for m in messages)
    assert any(m.endswith(f"({loader.counts['skipped']} skipped)") for m in messages)


def test_samples_with_unreadable_json_are_replaced_as_they_come(root, tmp_path, caplog):
    """The json is parsed ahead of the decode (a batch's samples at a time); a bad one still fails its own
    sample only, when its turn to decode comes: counted, logged with its key, replaced, repeatably."""
    urls = _bad_set(root, tmp_path, every=4, member="json")
    bad = {k for u in urls for k, m in read_tar_samples(Path(u)).items() if m["json"].startswith(b"{not")}
    loader = train_loader(urls, PLAIN, dataset="kinetics", num_classes=3, seed=0, epoch_batches=6)
    with caplog.at_level("WARNING", logger="tubevit.data.shards"):
        batches = list(loader)
    assert len(batches) == 6 and bad and not bad & {k for b in batches for k in b["key"]}
    messages = [r.getMessage() for r in caplog.records if "undecodable training sample" in r.getMessage()]
    assert loader.counts["skipped"] == len(messages) > 0
    assert all("no readable json member" in m and any(f":{k} " in m for k in bad) for m in messages)
    clean = list(train_loader(urls, PLAIN, dataset="kinetics", num_classes=3, seed=0, epoch_batches=6))
    assert all(torch.equal(x["video"], y["video"]) for x, y in zip(batches, clean, strict=True))


def test_resume_stays_exact_when_samples_are_skipped(root, tmp_path):
    urls = _bad_set(root, tmp_path, every=3)
    for workers in (0, 2):
        lcfg = replace(PLAIN, workers=workers, batch_size=2)

        def run(start, lcfg=lcfg):
            args = {"dataset": "kinetics", "num_classes": 3, "seed": 0, "epoch_batches": 8}
            return list(train_loader(urls, lcfg, start_batch=start, **args))

        full, resumed = run(0), run(3)
        assert len(resumed) == 5
        assert [x["key"] for x in resumed] == [x["key"] for x in full[3:]], workers
        assert all(torch.equal(x["video"], y["video"]) for x, y in zip(resumed, full[3:], strict=True))


def test_a_shard_set_without_a_decodable_sample_fails(root, tmp_path):
    bad = _bad_set(root, tmp_path / "bad", every=1)
    (tmp_path / "junk").mkdir()
    junk = [str(tmp_path / "junk" / f"j{i}.tar") for i in range(2)]
    for path in junk:
        Path(path).write_bytes(b"this is not a tar file" * 100)
    empty = [str(write_tar(tmp_path / "empty" / "e0.tar", []))]
    for urls, workers in ((bad, 0), (bad, 2), (junk, 0), (empty, 0)):
        loader = train_loader(
            urls, replace(PLAIN, workers=workers), dataset="kinetics", num_classes=3, epoch_batches=2
        )
        with pytest.raises(
            Exception, match="kinetics: the training shard set yields no decodable sample"
        ) as e:
            list(loader)
        if workers == 0:
            assert e.type is NoSamplesError
            assert f"({len(urls)} shards" in str(e.value)
    with pytest.raises(NoSamplesError, match=r"first failure: .*cannot open video"):
        list(train_loader(bad, PLAIN, dataset="kinetics", num_classes=3, epoch_batches=1))


def test_batch_memory_is_reused_only_once_released():
    from tubevit.data.shards import _BufferPool

    pool = _BufferPool(size=2)
    a = pool.take(1000).view(10, 100)
    a.fill_(7)
    b = pool.take(1000)  # a is held: another buffer
    assert b.data_ptr() != a.data_ptr() and (a == 7).all()
    view = a.permute(1, 0)
    del a
    c = pool.take(1000)  # a's memory is still held through its view
    assert c.data_ptr() not in (view.data_ptr(), b.data_ptr())
    ptr = view.data_ptr()
    del view, b
    assert pool.take(1000).data_ptr() == ptr  # released: handed out again
    assert pool.take(64).numel() == 64  # another size replaces an idle buffer


def test_augment_on_is_validated_and_auto_resolves_for_this_machine(root):
    from tubevit.config.base import ConfigError

    with pytest.raises(ConfigError, match=r"augment_on.*must be one of auto, cpu, device, got 'gpu'"):
        LoaderConfig(augment_on="gpu")
    loader = _loader(root, replace(PLAIN, augment_on="auto"))
    assert PLAIN.workers == 0  # without workers the CPU, too, crops batched in the training process
    assert loader.augment_on == "device"
    assert _loader(root, replace(PLAIN, augment_on="auto", workers=1)).augment_on == (
        "device" if torch.cuda.is_available() else CPU_AUTO_CHOICE
    )
    assert _loader(root, DEVICE).augment_on == "device" and _loader(root, AUG).augment_on == "cpu"


def test_a_batch_copies_each_sample_in_as_it_arrives_and_grows_to_the_largest_frames():
    from tubevit.data.augment import ClipParams
    from tubevit.data.shards import _BufferPool, _Collate

    gen = torch.Generator().manual_seed(0)
    shapes = [(2, 3, 4), (2, 5, 6), (2, 4, 2), (2, 5, 3)]  # (T, h, w): the second grows the buffer
    frames = [torch.randint(1, 256, (*s, 3), dtype=torch.uint8, generator=gen) for s in shapes]
    drawn = []

    def draw(i):  # the params are drawn when the batch is finished, in sample order
        drawn.append(i)
        return ClipParams(2, i, 0, 1, 1, ())

    collate = _Collate("kinetics", _BufferPool())
    batch = collate.batch(4)
    for i, f in enumerate(frames):
        sample = {"video": f, "params": functools.partial(draw, i), "label": torch.tensor(i), "key": f"k{i}"}
        batch.add(sample)
        assert len(batch) == i + 1
    assert drawn == []
    with pytest.raises(ValueError, match=r"batch of 4 samples is full; cannot add k9"):
        batch.add({"video": frames[0], "params": None, "label": torch.tensor(0), "key": "k9"})
    out = batch.finish()
    assert drawn == [0, 1, 2, 3] and out["key"] == ["k0", "k1", "k2", "k3"]
    assert out["label"].tolist() == [0, 1, 2, 3] and out["dataset"] == "kinetics"
    assert out["video"].shape == (4, 3, 2, 5, 6) and out["aug"][:, 1].tolist() == [0, 1, 2, 3]
    thwc = out["video"].permute(0, 2, 3, 4, 1)  # the channels-last buffer
    for i, (f, (_, h, w)) in enumerate(zip(frames, shapes, strict=True)):
        assert torch.equal(thwc[i, :, :h, :w], f)
        assert not thwc[i, :, h:].any() and not thwc[i, :, :, w:].any()  # zero padding


def test_a_batch_refuses_mismatched_samples_and_sizes_a_last_smaller_batch():
    from tubevit.data.shards import _Collate

    clip = torch.arange(2 * 3 * 4 * 4, dtype=torch.int64).to(torch.uint8).view(3, 2, 4, 4)
    batch = _Collate("kinetics").batch(4)
    batch.add({"video": clip, "label": torch.tensor(1), "key": "a", "view": 0})
    with pytest.raises(ValueError, match=r"b: video \(3, 2, 4, 5\) torch.uint8 does not match the batch's"):
        batch.add({"video": torch.zeros(3, 2, 4, 5, dtype=torch.uint8), "label": torch.tensor(0), "key": "b"})
    batch.add({"video": clip + 1, "label": torch.tensor(2), "key": "c", "view": 1})
    out = batch.finish()  # 2 of 4: its own, exactly sized tensor
    assert out["video"].shape == (2, 3, 2, 4, 4) and out["video"].is_contiguous()
    assert out["video"].untyped_storage().nbytes() == 2 * clip.numel()
    assert torch.equal(out["video"][0], clip) and torch.equal(out["video"][1], clip + 1)
    assert out["key"] == ["a", "c"] and out["view"] == [0, 1] and out["label"].tolist() == [1, 2]
    device = _Collate("kinetics").batch(2)
    device.add({"video": torch.zeros(2, 4, 4, 3, dtype=torch.uint8), "params": None, "label": 0, "key": "x"})
    with pytest.raises(ValueError, match=r"y: frames \(3, 4, 4, 3\) torch.uint8 do not match the batch's"):
        device.add(
            {"video": torch.zeros(3, 4, 4, 3, dtype=torch.uint8), "params": None, "label": 0, "key": "y"}
        )
    with pytest.raises(ValueError, match="an empty batch"):
        _Collate("kinetics").batch(2).finish()


def test_read_ahead_keeps_the_order_and_prepares_a_chunk_before_handing_it_on():
    from tubevit.data.shards import _read_ahead

    pulled, prepared = [], []

    def source():
        for i in range(7):
            pulled.append(i)
            yield {"i": i}

    out = []
    for sample in _read_ahead(3, lambda s: prepared.append(s["i"]))(source()):
        out.append((sample["i"], len(pulled), len(prepared)))
    # sample i arrives once its whole chunk of 3 (the last chunk: 1) has been read and prepared
    assert out == [(0, 3, 3), (1, 3, 3), (2, 3, 3), (3, 6, 6), (4, 6, 6), (5, 6, 6), (6, 7, 7)]
    assert [s["i"] for s in _read_ahead(4)(iter([{"i": i} for i in range(5)]))] == [0, 1, 2, 3, 4]
