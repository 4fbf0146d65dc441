"""Model bundles (``tubevit.bundle``): both layouts, the pickle-free export and its round-trip check."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from tubevit import bundle as B
from tubevit.config.model import ModelConfig, build_model

CLASSES = ["archery", "bowling", "cycling"]


def make_bundle(seed: int = 0) -> B.ModelBundle:
    cfg = ModelConfig(variant="nano", tubes="embedded32")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU generator only: seeded weights
        model = build_model(cfg, {"toy": 3})
    return B.ModelBundle(
        model=model,
        config=cfg,
        heads={"toy": 3},
        classes={"toy": list(CLASSES)},
        inputs={"toy": {"frames": 8, "size": 32, "fps": 6.0, "short_side": 40}},
        multilabel={"toy": False},
        extra={"stage": "test", "steps": 0},
    )


def logits(model, frames=8, size=32):
    model.eval()
    with torch.no_grad():
        return model(B.reference_input(frames, size), "toy")


def test_save_load_pt_round_trip(tmp_path):
    b = make_bundle()
    B.save_model(tmp_path, b)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.pt"]
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["format"] == B.BUNDLE_FORMAT and meta["heads"] == {"toy": 3}
    assert meta["classes"] == {"toy": CLASSES} and meta["stage"] == "test"
    assert meta["inputs"]["toy"] == {"frames": 8, "size": 32, "fps": 6.0, "short_side": 40}
    assert meta["tokens"] == {"toy": 16 + 16}  # embedded32 at 8x32^2: image tube 16 + 8x8x8 tiles 16
    assert meta["model"]["tubes"][1] == {
        "kernel": [8, 8, 8],
        "stride": [8, 8, 8],
        "offset": [0, 0, 0],
        "s2d": [1, 1, 1],
    }
    loaded = B.load_model(tmp_path)
    assert loaded.classes == b.classes and loaded.inputs == b.inputs and loaded.extra == b.extra
    assert torch.equal(logits(loaded.model), logits(b.model))


def test_model_pt_is_a_plain_state_dict(tmp_path):
    B.save_model(tmp_path, make_bundle())
    state = torch.load(tmp_path / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert not any("pos_embed" in k for k in state)  # non-persistent buffer


def test_pipelines_keep_the_same_names():
    from pipelines import training

    assert training.save_model is B.save_model and training.load_model is B.load_model
    assert training.ModelBundle is B.ModelBundle and training.BUNDLE_FORMAT == B.BUNDLE_FORMAT
    assert training.MODEL_FILE == "model.pt"


def test_export_safetensors_round_trip(tmp_path):
    src, out = tmp_path / "src", tmp_path / "out"
    b = make_bundle()
    B.save_model(src, b)
    report = B.export_model(src, out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert report["heads"] == {"toy": 0.0} and report["tensors"] == len(b.model.state_dict())
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    # loadable without pickle: the safetensors file holds exactly the state dict's tensors
    from safetensors.torch import load_file

    tensors = load_file(str(out / "model.safetensors"))
    state = b.model.state_dict()
    assert tensors.keys() == state.keys() and all(torch.equal(tensors[k], state[k]) for k in state)
    assert torch.equal(logits(B.load_model(out).model), logits(b.model))


def test_load_model_uses_no_pickle_for_safetensors(tmp_path, monkeypatch):
    B.save_model(tmp_path, make_bundle(), layout="safetensors")

    def refuse(*args, **kwargs):
        raise AssertionError("pickle/torch.load used")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    assert B.load_model(tmp_path).heads == {"toy": 3}


def test_export_detects_a_changed_round_trip(tmp_path, monkeypatch):
    src = tmp_path / "src"
    B.save_model(src, make_bundle())
    real = B._load_state

    def corrupt(path):
        state = real(path)
        if path.name == B.SAFETENSORS_FILE:
            key = next(k for k in state if k.endswith("heads.toy.bias"))
            state[key] = state[key] + 1e-3
        return state

    monkeypatch.setattr(B, "_load_state", corrupt)
    with pytest.raises(B.ExportError, match=r"head 'toy' logits differ after the export round trip"):
        B.export_model(src, tmp_path / "out")


def test_export_refuses_its_source(tmp_path):
    B.save_model(tmp_path, make_bundle())
    with pytest.raises(ValueError, match="export needs a folder other than the source"):
        B.export_model(tmp_path, tmp_path)


def test_save_switches_layout_and_removes_the_other(tmp_path):
    b = make_bundle()
    B.save_model(tmp_path, b, layout="safetensors")
    B.save_model(tmp_path, b)
    assert B.weights_file(tmp_path).name == "model.pt" and not (tmp_path / "model.safetensors").exists()


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config.json: missing"):
        B.load_model(tmp_path)
    B.save_model(tmp_path, make_bundle())
    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"both model\.safetensors and model\.pt are present"):
        B.load_model(tmp_path)
    (tmp_path / "model.pt").unlink()
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file"):
        B.load_model(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=r"no weights \(model.safetensors or model.pt\)"):
        B.load_model(tmp_path)
    B.save_model(tmp_path, make_bundle())
    (tmp_path / "config.json").write_text('{"format": 99}')
    with pytest.raises(ValueError, match="not a model config of format 1"):
        B.load_model(tmp_path)
