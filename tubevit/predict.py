"""Predict the classes of video files with a model bundle, sampling them the way evaluation does.

A file goes through the same steps as a clip of the data stages and of evaluation:

1. :func:`decode_video`: ffmpeg (through ffmpeg-python, an argument list, never a shell; the path passed as
   ``file:<absolute path>`` so that no other protocol is opened) reads any file it can (another container,
   another frame rate, a rotation flag, a long video), applies the rotation, and re-encodes at most
   ``max_seconds`` of it, as the reencode stage does, at the head's trained ``fps`` with its short side at
   the trained ``short_side`` (libx264 ``veryfast``, CRF 23, yuv420p), into a temporary mp4. Its frame
   count sets ``temporal`` uniform windows of the trained ``frames`` (:func:`eval_indices`), and only their
   frames are kept from an RGB rawvideo pipe of that mp4.
2. :func:`clip_views`: each window resized (short side -> ``size``) and cut into ``spatial`` crops
   (:class:`EvalTransform`): float32 normalised ``(V, 3, T, size, size)`` with view ``v = t * spatial + s``.
3. :func:`predict_views`: logits of every view, aggregated like evaluation: the mean of the softmax over
   views for single-label heads, the max of the per-class sigmoid for multi-label heads.

The head's ``fps`` and ``short_side`` come from the bundle's ``config.json`` (``inputs.<head>``); a bundle
without them needs them passed explicitly (the short side then defaults to ``size``).
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tubevit.bundle import ModelBundle
from tubevit.data.transforms import EvalTransform
from tubevit.data.video import eval_indices
from tubevit.evaluate import aggregate

__all__ = [
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MAX_SECONDS",
    "DecodedVideo",
    "Prediction",
    "VideoError",
    "choose_head",
    "clip_views",
    "decode_video",
    "parse_views",
    "predict_file",
    "predict_views",
]

MAX_SECONDS = 600.0  # seconds of a file that are decoded (the rest is ignored; the result says so)
MAX_ASPECT = 8.0  # long side / short side beyond which a file is refused (its frames would be huge)
MAX_PIXELS = 8192 * 4352  # source frame area beyond which a file is refused (8K DCI is 8192x4320)
_LOCAL = {"protocol_whitelist": "file"}  # ffmpeg opens local files only (no playlist fetching a URL)
_PRESET, _CRF = "veryfast", 23  # the reencode stage's defaults


class VideoError(ValueError):
    """A file cannot be predicted on; the message starts with the file and says why."""

    def __init__(self, path: str | Path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class DecodedVideo:
    """The evaluation windows of a file decoded at the model's rate and size.

    ``windows``: uint8 ``(V_t, T, H, W, 3)`` RGB, ``min(H, W) == short_side``; ``indices``: int64
    ``(V_t, T)``, their frames among the ``num_frames`` decoded at ``fps`` frames per second;
    ``source_fps``, ``source_duration`` (seconds), ``source_size`` ``(width, height)`` as stored (before
    rotation), ``rotation`` in degrees; ``truncated``: the file is longer than the decoded part.
    """

    path: str
    windows: np.ndarray
    indices: np.ndarray
    num_frames: int
    fps: float
    source_fps: float
    source_duration: float
    source_size: tuple[int, int]
    rotation: int
    truncated: bool


@dataclass(frozen=True)
class Prediction:
    """Scores of one file: ``scores`` float32 ``(K,)`` (probabilities summing to 1 for a single-label head,
    independent sigmoid scores for a multi-label head) and the top classes ``(index, name, score)``."""

    path: str
    head: str
    multilabel: bool
    scores: torch.Tensor
    top: list[tuple[int, str, float]]
    views: tuple[int, int]  # (temporal, spatial)
    video: DecodedVideo

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        key = "score" if self.multilabel else "probability"
        out: dict[str, Any] = {
            "file": self.path,
            "head": self.head,
            "multilabel": self.multilabel,
            "views": {"temporal": self.views[0], "spatial": self.views[1]},
            "decoded": {
                "frames": self.video.num_frames,
                "fps": self.video.fps,
                "height": int(self.video.windows.shape[2]),
                "width": int(self.video.windows.shape[3]),
                "truncated": self.video.truncated,
            },
            "source": {
                "fps": self.video.source_fps,
                "duration_s": self.video.source_duration,
                "width": self.video.source_size[0],
                "height": self.video.source_size[1],
                "rotation": self.video.rotation,
            },
            "top": [{"index": i, "class": name, key: score} for i, name, score in self.top],
        }
        if self.multilabel:
            out["scores"] = {name: float(s) for name, s in zip(classes, self.scores.tolist(), strict=True)}
        return out


def parse_views(text: str) -> tuple[int, int]:
    """``"4x3"`` -> ``(4, 3)``: temporal views >= 1 and spatial views 1 or 3."""
    t, sep, s = text.lower().partition("x")
    if not sep or not t.isdigit() or not s.isdigit():
        raise ValueError(f"views must look like 4x3 (temporal x spatial), got {text!r}")
    temporal, spatial = int(t), int(s)
    if temporal < 1 or spatial not in (1, 3):
        raise ValueError(f"views {text!r}: temporal must be >= 1 and spatial 1 or 3")
    return temporal, spatial


def _rate(text: Any) -> float:
    num, _, den = str(text or "0").partition("/")
    try:
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _rotation(stream: dict[str, Any]) -> int:
    for side in stream.get("side_data_list") or []:
        if "rotation" in side:
            return round(float(side["rotation"])) % 360
    rotate = (stream.get("tags") or {}).get("rotate")
    return round(float(rotate)) % 360 if rotate else 0


def _probe(path: Path) -> dict[str, Any]:
    import ffmpeg

    if not path.exists():
        raise VideoError(path, "no such file")
    if not path.is_file():
        raise VideoError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoError(path, "empty file (0 bytes)")
    try:
        info = ffmpeg.probe(f"file:{path.resolve()}", **_LOCAL)
    except ffmpeg.Error as exc:
        lines = [ln for ln in exc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
        detail = lines[-1].split(": ", 1)[-1] if lines else "ffprobe failed"
        raise VideoError(path, f"not a video ffmpeg can read ({detail})") from None
    streams = info.get("streams") or []
    videos = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not videos:
        kinds = sorted({str(s.get("codec_type")) for s in streams}) or ["none"]
        raise VideoError(path, f"no video stream (streams: {', '.join(kinds)})")
    stream = videos[0]
    width, height = int(stream.get("width") or 0), int(stream.get("height") or 0)
    if width <= 0 or height <= 0:
        raise VideoError(path, f"the video stream has no frame size ({width}x{height})")
    duration = 0.0
    for value in (stream.get("duration"), (info.get("format") or {}).get("duration")):
        try:
            duration = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(duration) and duration > 0:
            break
        duration = 0.0
    return {
        "width": width,
        "height": height,
        "fps": _rate(stream.get("avg_frame_rate")) or _rate(stream.get("r_frame_rate")),
        "duration": duration,
        "rotation": _rotation(stream),
        "index": int(stream.get("index", 0)),
    }


def _ffmpeg_error(exc: Any) -> str:
    lines = (
        [ln for ln in exc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()] if exc.stderr else []
    )
    return lines[-1] if lines else "no message"


def _transcode(
    path: Path, info: dict[str, Any], out: Path, fps: float, side: int, max_seconds: float
) -> None:
    """The reencode stage's encode: at most ``max_seconds`` at ``fps``, short side ``side`` (even), rotation
    applied (ffmpeg's autorotate runs before the filters), h264 yuv420p, into ``out``."""
    import ffmpeg

    scale = f"scale='if(gte(iw,ih),-2,{side})':'if(gte(iw,ih),{side},-2)'"
    stream = ffmpeg.input(f"file:{path.resolve()}", t=f"{max_seconds:g}", **_LOCAL)
    stream = stream[str(info["index"])]  # -map 0:<index>: the probed video stream, not cover art
    cmd = ffmpeg.output(
        stream,
        str(out),
        vf=f"fps={fps:g},{scale},setsar=1,format=yuv420p",
        vcodec="libx264",
        preset=_PRESET,
        crf=_CRF,
        g=max(1, round(fps)),
        threads=1,
        an=None,
        sn=None,
        dn=None,
        map_metadata=-1,
        fflags="+bitexact",
    ).global_args("-nostdin", "-hide_banner", "-loglevel", "error")
    try:
        cmd.run(capture_stdout=True, capture_stderr=True, overwrite_output=True)
    except ffmpeg.Error as exc:
        raise VideoError(path, f"ffmpeg could not decode it ({_ffmpeg_error(exc)})") from None


def _read_frames(path: Path, mp4: Path, wanted: np.ndarray) -> tuple[np.ndarray, int, int]:
    """The frames ``wanted`` (sorted unique indices) of ``mp4`` as uint8 ``(len(wanted), H, W, 3)``, read
    from an ffmpeg rawvideo pipe frame by frame (only the wanted ones are kept); also H and W."""
    import ffmpeg

    stream = next(s for s in ffmpeg.probe(str(mp4))["streams"] if s.get("codec_type") == "video")
    height, width = int(stream["height"]), int(stream["width"])
    nbytes = height * width * 3
    proc = (
        ffmpeg.input(str(mp4))
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
        .run_async(pipe_stdout=True, pipe_stderr=True)
    )
    out = np.empty((len(wanted), height, width, 3), dtype=np.uint8)
    got, n = 0, 0
    try:
        while got < len(wanted):
            buf = proc.stdout.read(nbytes)
            if len(buf) < nbytes:
                break
            if n == wanted[got]:
                out[got] = np.frombuffer(buf, dtype=np.uint8).reshape(height, width, 3)
                got += 1
            n += 1
    finally:
        proc.stdout.close()
        proc.kill()
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        proc.stderr.close()
        proc.wait()
    if got < len(wanted):
        raise VideoError(
            path, f"decoded {n} frames, frame {int(wanted[got])} is missing ({err or 'no message'})"
        )
    return out, height, width


def decode_video(
    path: str | Path,
    fps: float,
    short_side: int,
    clip_frames: int,
    temporal: int,
    max_seconds: float = MAX_SECONDS,
) -> DecodedVideo:
    """Decode ``temporal`` evaluation windows of ``clip_frames`` frames of the first ``max_seconds`` of
    ``path``, at ``fps`` with its short side at ``short_side`` (rounded up to even for yuv420p).

    The file is re-encoded as the reencode stage does (rotation applied: a portrait phone video stays
    portrait) into a temporary mp4; its frame count ``N`` sets the windows (:func:`eval_indices`), and only
    their frames are kept while it is decoded, so memory stays ``temporal x clip_frames`` frames however
    long the file.

    Raises:
        VideoError: the file is missing, empty, not a video ffmpeg reads (or one that would make it open
            anything but a local file, such as a playlist of URLs), has no video stream, has an aspect
            ratio over :data:`MAX_ASPECT` or frames over :data:`MAX_PIXELS`, or decodes to no frames; the
            message names the file.
    """
    import ffmpeg

    path = Path(path)
    if fps <= 0 or short_side < 2 or max_seconds <= 0 or clip_frames < 1 or temporal < 1:
        raise ValueError(
            f"fps, short_side, clip_frames, temporal and max_seconds must be positive, got {fps}, "
            f"{short_side}, {clip_frames}, {temporal}, {max_seconds}"
        )
    info = _probe(path)
    aspect = max(info["width"], info["height"]) / min(info["width"], info["height"])
    if aspect > MAX_ASPECT:
        raise VideoError(
            path, f"frame size {info['width']}x{info['height']} is more than {MAX_ASPECT:g}:1; refused"
        )
    if info["width"] * info["height"] > MAX_PIXELS:
        raise VideoError(
            path, f"frame size {info['width']}x{info['height']} is over {MAX_PIXELS} pixels; refused"
        )
    with tempfile.TemporaryDirectory(prefix="tubevit-predict-") as tmp:
        mp4 = Path(tmp) / "clip.mp4"
        _transcode(path, info, mp4, fps, short_side + short_side % 2, max_seconds)
        try:
            streams = ffmpeg.probe(str(mp4))["streams"]
            count = int(next(s for s in streams if s.get("codec_type") == "video").get("nb_frames") or 0)
        except (ffmpeg.Error, StopIteration, ValueError):
            count = 0
        if count < 1:
            raise VideoError(path, "decodes to no frames")
        indices = eval_indices(count, clip_frames, temporal)  # (temporal, clip_frames)
        wanted, inverse = np.unique(indices, return_inverse=True)
        frames, _, _ = _read_frames(path, mp4, wanted)
    windows = frames[inverse.reshape(indices.shape)]  # (temporal, clip_frames, H, W, 3)
    return DecodedVideo(
        path=str(path),
        windows=windows,
        indices=indices,
        num_frames=count,
        fps=float(fps),
        source_fps=info["fps"],
        source_duration=info["duration"],
        source_size=(info["width"], info["height"]),
        rotation=info["rotation"],
        truncated=info["duration"] > max_seconds,
    )


def clip_views(windows: np.ndarray, size: int, spatial: int) -> torch.Tensor:
    """Evaluation views of decoded windows uint8 ``(temporal, T, H, W, 3)``: each window short-side
    resized to ``size`` and cut into ``spatial`` crops (:class:`EvalTransform`). Returns float32
    normalised ``(temporal * spatial, 3, T, size, size)``, view ``t * spatial + s``."""
    transform = EvalTransform(size, spatial)
    return torch.cat([transform(window) for window in windows])


@torch.no_grad()
def predict_views(
    model: torch.nn.Module, views: torch.Tensor, head: str, multilabel: bool, batch_size: int = 8
) -> torch.Tensor:
    """Aggregated scores ``(K,)`` of ``views`` float32 ``(V, 3, T, S, S)`` through ``model``'s ``head``:
    the mean softmax over views (single-label) or the max sigmoid (multi-label). ``model`` must be in eval
    mode; views are forwarded ``batch_size`` at a time on ``model``'s device."""
    device = next(model.parameters()).device
    logits = torch.cat([model(chunk.to(device), head).float().cpu() for chunk in views.split(batch_size)])
    return aggregate(logits.unsqueeze(0), multilabel)[0]  # (1, V, K) -> (K,)


def choose_head(bundle: ModelBundle, head: str | None) -> str:
    """``head``, or the bundle's only head; errors list the heads."""
    names = list(bundle.heads)
    if head is None:
        if len(names) == 1:
            return names[0]
        raise ValueError(f"the model has {len(names)} heads ({', '.join(names)}): choose one with --head")
    if head not in bundle.heads:
        raise ValueError(f"the model has no head {head!r} (heads: {', '.join(names)})")
    return head


def predict_file(
    bundle: ModelBundle,
    path: str | Path,
    *,
    head: str | None = None,
    views: tuple[int, int] = (4, 3),
    top: int = 5,
    fps: float | None = None,
    short_side: int | None = None,
    max_seconds: float = MAX_SECONDS,
    batch_size: int = 8,
) -> Prediction:
    """Decode ``path`` at the head's trained fps and size, sample ``views`` = (temporal, spatial) as
    evaluation does, and score every class. ``fps`` / ``short_side`` override ``config.json``'s
    ``inputs.<head>``. The model is put in eval mode.

    Raises:
        VideoError: the file cannot be read (see :func:`decode_video`).
        ValueError: no such head, or the bundle has no ``fps`` for the head and none is given.
    """
    head = choose_head(bundle, head)
    shape = bundle.inputs[head]
    fps = fps or shape.get("fps")
    if not fps:
        raise ValueError(f"config.json has no inputs.{head}.fps (the trained frame rate): pass --fps")
    short_side = short_side or int(shape.get("short_side") or shape["size"])
    clip_frames, size = int(shape["frames"]), int(shape["size"])
    temporal, spatial = views
    if clip_frames == 1:
        temporal = 1  # an image head: one frame, centred
    video = decode_video(path, float(fps), short_side, clip_frames, temporal, max_seconds)
    model = bundle.model.eval()
    multilabel = bundle.multilabel[head]
    scores = predict_views(model, clip_views(video.windows, size, spatial), head, multilabel, batch_size)
    classes = bundle.classes[head]
    k = min(top, scores.numel())
    values, indices = scores.topk(k)
    best = [(int(i), classes[int(i)], float(v)) for v, i in zip(values, indices, strict=True)]
    return Prediction(
        path=str(path),
        head=head,
        multilabel=multilabel,
        scores=scores,
        top=best,
        views=(temporal, spatial),
        video=video,
    )
