"""``tubevit tubes`` / ``draw_tubes``: the PNG, and what it draws against the model's tube geometry."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tubevit.cli import main
from tubevit.model.tubes import centers, get_tube_set, grid
from tubevit.viz import PALETTE, canvas_size, dot_radius, draw_tubes

DOCS = Path(__file__).resolve().parents[2] / "docs"


def projections(spec, frames, size):
    """Distinct centres of ``spec``'s tokens projected on each view, from the model's ``centers``."""
    c = centers(spec, frames, size, size).tolist()  # (t, y, x)
    return {"tx": {(t, x) for t, _, x in c}, "xy": {(x, y) for _, y, x in c}}


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    out = tmp_path_factory.mktemp("viz") / "tubes.png"
    return draw_tubes(get_tube_set("paper"), 32, 224, out), out


def test_file_and_size(paper):
    drawing, out = paper
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "RGB"
        assert image.size == drawing.size == canvas_size(4) == (1128, 681)
    assert drawing.tokens == [98, 147, 98, 196]
    assert drawing.colours == list(PALETTE[:4])


def test_centres_are_the_models_centres(paper):
    drawing, _ = paper
    specs = get_tube_set("paper")
    for i, spec in enumerate(specs):
        expected = projections(spec, 32, 224)
        for view in ("tx", "xy"):
            drawn = [c.clip for c in drawing.centres if c.tube == i and c.view == view]
            assert len(drawn) == len(set(drawn)) and set(drawn) == expected[view]
    # e.g. the image tube (1x16x16, stride 16): centres at x = 7.5, 23.5, ... in frame 0
    assert {c.clip for c in drawing.centres if c.tube == 3 and c.view == "tx"} == {
        (0.0, 7.5 + 16 * i) for i in range(14)
    }
    # pixel positions: panels of 480 px, the tx panel at (56, 48), the xy panel at (592, 48)
    c = next(c for c in drawing.centres if c.tube == 3 and c.view == "xy" and c.clip == (7.5, 7.5))
    assert c.pixel == (round(592 + 8 * 480 / 224), round(48 + 8 * 480 / 224))


def test_token_boxes_match_the_grid(paper):
    drawing, _ = paper
    for i, spec in enumerate(get_tube_set("paper")):
        gt, gh, gw = grid(spec, 32, 224, 224)
        k, s, f = spec.weight_kernel, spec.stride, spec.s2d
        extent = [(f[a] - 1) * s[a] // f[a] + k[a] for a in range(3)]  # S2D: the union of the parts
        for view, (ua, va), count in (("tx", (0, 2), gt * gw), ("xy", (2, 1), gw * gh)):
            boxes = [b.clip for b in drawing.boxes if b.tube == i and b.view == view and b.kind == "token"]
            assert len(boxes) == count
            assert all((u1 - u0, v1 - v0) == (extent[ua], extent[va]) for u0, u1, v0, v1 in boxes)
            # each centre (index units + 0.5) is the middle of one footprint
            mids = {((u0 + u1) / 2 - 0.5, (v0 + v1) / 2 - 0.5) for u0, u1, v0, v1 in boxes}
            assert mids == projections(spec, 32, 224)[view]


def test_s2d_parts_are_drawn_as_sub_boxes(paper):
    drawing, _ = paper

    def parts(tube, view):
        return [b.clip for b in drawing.boxes if b.tube == tube and b.view == view and b.kind == "part"]

    # tube 0: 8x8x8, 2x temporal S2D, stride 16 in t: two 8-frame parts 8 frames apart; none in x-y
    tx = parts(0, "tx")
    assert len(tx) == 2 * 2 * 7 and {(u1 - u0, v1 - v0) for u0, u1, v0, v1 in tx} == {(8, 8)}
    assert (0.0, 8.0, 0.0, 8.0) in tx and (8.0, 16.0, 0.0, 8.0) in tx and parts(0, "xy") == []
    # tube 1: 16x4x4, 4x spatial S2D (1, 2, 2), stride 32 -> parts 16 px apart: 2 along x, 2x2 in x-y
    assert len(parts(1, "tx")) == 3 * 7 * 2 and len(parts(1, "xy")) == 7 * 7 * 4
    assert (8.0, 12.0, 8.0, 12.0) in parts(1, "xy") and (24.0, 28.0, 24.0, 28.0) in parts(1, "xy")
    assert parts(2, "tx") == parts(3, "xy") == []  # no S2D: the footprint only


def test_interpolated_kernels_are_dashed_resized_boxes(tmp_path):
    specs = get_tube_set("charades_interpolated")
    drawing = draw_tubes(specs, 32, 224, tmp_path / "interp.png")
    interp = [b for b in drawing.boxes if b.kind == "interpolated"]
    assert {b.tube for b in interp} == {0, 1, 2}  # the image tube keeps its 1x16x16 kernel
    # tube 2: 4x12x12 learned, applied as 4x32x32: 10 px more per side in x and y, same t
    xy = {b.clip for b in interp if b.tube == 2 and b.view == "xy"}
    assert (6.0, 38.0, 6.0, 38.0) in xy and len(xy) == 7 * 7
    tokens = {b.clip for b in drawing.boxes if b.tube == 2 and b.view == "xy" and b.kind == "token"}
    assert (16.0, 28.0, 16.0, 28.0) in tokens
    # the same centres as the learned-kernel tubes
    for i, spec in enumerate(specs):
        drawn = {c.clip for c in drawing.centres if c.tube == i and c.view == "xy"}
        assert drawn == projections(spec, 32, 224)["xy"]


def test_pixel_colours_at_centres(paper):
    drawing, out = paper
    image = Image.open(out).convert("RGB")
    last: dict[tuple[int, int], int] = {}
    for c in drawing.centres:  # drawn in tube order: the last tube at a pixel is on top
        last[c.pixel] = c.tube
    for pixel, tube in last.items():
        assert image.getpixel(pixel) == PALETTE[tube], (pixel, tube)
    # a larger dot of an earlier tube shows as a ring around a later tube's centre
    c = next(c for c in drawing.centres if c.tube == 0 and c.view == "xy" and c.clip == (3.5, 3.5))
    ring = (c.pixel[0] + dot_radius(0, 4) - 1, c.pixel[1])
    assert dot_radius(0, 4) == 6 and image.getpixel(ring) == PALETTE[0]
    assert image.getpixel((5, 5)) == (255, 255, 255)  # background


def test_skipped_tube_and_no_tokens(tmp_path):
    drawing = draw_tubes(get_tube_set("paper"), 16, 224, tmp_path / "t16.png")  # the 16x4x4 tube: no position
    assert drawing.tokens == [49, 0, 49, 196]
    assert not [b for b in drawing.boxes if b.tube == 1] and not [c for c in drawing.centres if c.tube == 1]
    with pytest.raises(ValueError, match="no tube has a position on a 1x8x8 clip"):
        draw_tubes(get_tube_set("paper"), 1, 8, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_cli_tubes(tmp_path, capsys):
    out = tmp_path / "plots" / "tubes.png"
    spec = '[{"kernel": [1, 8, 8], "stride": [8, 8, 8], "s2d": null}, {"kernel": [4, 8, 8], "stride": [4, 16, 16], "s2d": [2, 1, 1]}]'
    assert main(["tubes", "--tubes", spec, "--frames", "8", "--size", "64", "--out", str(out)]) == 0
    assert f"wrote {out} (1128x645): tokens per tube [64, 32], 96 in all" in capsys.readouterr().out
    assert Image.open(out).size == canvas_size(2) == (1128, 645)
    assert [p.name for p in out.parent.iterdir()] == ["tubes.png"]  # no temporary left behind
    assert main(["tubes", "--tubes", "paper", "--frames", "1", "--size", "8", "--out", str(out)]) == 2
    assert "tubevit tubes: no tube has a position on a 1x8x8 clip" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "size"), [("tubes-paper.png", (1128, 681)), ("tubes-embedded32.png", (1128, 645))]
)
def test_docs_pictures(name, size):
    with Image.open(DOCS / name) as image:
        assert image.format == "PNG" and image.size == size
