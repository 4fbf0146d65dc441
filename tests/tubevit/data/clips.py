"""Tiny generated media for the shard and loader tests: videos whose frames encode their own index.

Frame i of an index video is filled with gray level ``LEVEL * i`` (i < 32), with a small bright square in
one corner so that frames are not flat. After h264 (yuv420p, crf 10) the mean of the centre region comes
back within about 2 levels, so ``round(mean / LEVEL)`` recovers the index.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

LEVEL = 8
MAX_FRAMES = 32


def index_frames(n: int, height: int = 48, width: int = 64) -> np.ndarray:
    """uint8 (n, H, W, 3): frame i is gray ``LEVEL * i`` with a white 6x6 square at the top left."""
    if n > MAX_FRAMES:
        raise ValueError(f"at most {MAX_FRAMES} index frames, got {n}")
    frames = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        frames[i] = LEVEL * i
        frames[i, :6, :6] = 255
    return frames


def encode(path: Path, frames: np.ndarray, fps: float) -> Path:
    """Encode uint8 (n, H, W, 3) RGB frames to an h264 mp4 at ``fps`` (deterministic flags)."""
    _n, h, w, _ = frames.shape
    path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        "ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-threads", "1",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "-",
        "-c:v", "libx264", "-preset", "veryfast", "-crf", "10", "-g", str(round(fps)),
        "-pix_fmt", "yuv420p", "-threads", "1", "-fflags", "+bitexact", "-map_metadata", "-1",
        "-movflags", "+faststart", str(path),
    ]  # fmt: skip
    subprocess.run(cmd, input=frames.tobytes(), check=True)
    return path


def decoded_indices(frames: np.ndarray) -> list[int]:
    """The index each decoded uint8 (..., H, W, 3) frame encodes (mean of its lower-right region / LEVEL)."""
    h, w = frames.shape[-3:-1]
    region = frames[..., h // 2 :, w // 2 :, :].reshape(*frames.shape[:-3], -1).astype(np.float64)
    return np.rint(region.mean(-1) / LEVEL).astype(int).tolist()


def write_image(path: Path, value: int, size: tuple[int, int] = (40, 56)) -> Path:
    """A JPEG (q=95) of size (H, W) filled with gray ``value``."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, np.uint8)).save(path, quality=95)
    return path


def make_video_set(
    root: Path,
    items: list[dict],
    classes: list[str],
    fps: float = 6.0,
) -> Path:
    """Write ``root`` as the reencode stage does: ``<split>/<id>.mp4``, ``manifest.jsonl``, ``classes.json``.

    Each item dict has ``id``, ``split``, ``frames`` (count) and optionally ``label``, ``labels``,
    ``actions``, ``height`` and ``width`` (pixels, default 48 x 64). Returns ``root``.
    """
    rows = []
    for item in items:
        n = item["frames"]
        rel = f"{item['split']}/{item['id']}.mp4"
        frames = index_frames(n, item.get("height", 48), item.get("width", 64))
        encode(root / rel, frames, fps)
        rows.append(
            {
                "id": item["id"],
                "split": item["split"],
                "file": rel,
                "label": item.get("label"),
                "labels": item.get("labels", []),
                "actions": item.get("actions", []),
                "fps": fps,
                "frames": n,
                "duration": n / fps,
                "width": frames.shape[2],
                "height": frames.shape[1],
                "source": f"raw/{item['id']}.mp4",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (root / "classes.json").write_text(json.dumps(classes))
    return root


def make_image_set(root: Path, items: list[dict], classes: list[str]) -> Path:
    """As :func:`make_video_set` for images: ``<split>/<id>.jpg`` filled with gray ``value``."""
    rows = []
    for item in items:
        rel = f"{item['split']}/{item['id']}.jpg"
        write_image(root / rel, item.get("value", 128))
        rows.append(
            {
                "id": item["id"],
                "split": item["split"],
                "file": rel,
                "label": item["label"],
                "labels": [],
                "actions": [],
                "fps": 0.0,
                "frames": 1,
                "duration": 0.0,
                "width": 56,
                "height": 40,
                "source": f"raw/{item['id']}.JPEG",
            }
        )
    (root / "manifest.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    (root / "classes.json").write_text(json.dumps(classes))
    return root


def write_tar(path: Path, samples: list[dict]) -> Path:
    """A WebDataset tar of ``samples`` (dicts with ``__key__`` and ``<ext>: bytes`` members), written as is."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as sink:
        for sample in samples:
            sink.write(sample)
    return path
