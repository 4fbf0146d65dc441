"""Draw where a tube set samples a clip: a t–x view and an x–y view, one colour per tube (PIL only).

``draw_tubes(specs, frames, size, out_path)`` writes a PNG and returns what it drew (:class:`TubeDrawing`),
so that a test can compare it with the model's geometry (:func:`tubevit.model.tubes.grid` and
:func:`tubevit.model.tubes.centers`, which this module uses).

Coordinates. A clip is ``frames x size x size``; frame / pixel ``i`` covers ``[i, i + 1)``. A token whose
kernel starts at ``p`` with length ``k`` covers ``[p, p + k)`` on that axis, and its centre, ``p + (k - 1)/2``
in :func:`centers`' index units, is drawn at ``p + k/2``. The t–x view projects every token onto time
(horizontal, frames) and width (vertical, pixels), so tokens that differ only in y coincide; the x–y view
projects onto width (horizontal) and height (vertical), so tokens that differ only in t coincide. Each
distinct projected footprint is drawn once.

What is drawn per token:

- its footprint (solid box): the learned kernel, or for an S2D tube the union of its parts;
- S2D parts (thin inner boxes): ``s2d = (f_t, f_h, f_w)`` parts starting ``stride/f`` apart, each a kernel
  box. 2x temporal parts are side by side in the t–x view and coincide in the x–y view; 4x spatial parts
  are 2 along x in the t–x view and 2x2 in the x–y view;
- an interpolated kernel (dashed box): the resized kernel the forward applies, ``(kernel -
  learned_kernel)/2`` larger per side, around the same centre (the token keeps its position);
- its centre (a dot).

Tubes with no position on the clip are listed in the legend as skipped.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from tubevit.model.tubes import TubeSpec, centers, grid, token_counts

__all__ = [
    "PALETTE",
    "DrawnBox",
    "DrawnCentre",
    "TubeDrawing",
    "canvas_size",
    "dot_radius",
    "draw_tubes",
    "tube_boxes",
]

PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (23, 190, 207),
    (188, 189, 34),
    (127, 127, 127),
)
"""Tube colours (RGB) in tube order, repeating after 10 tubes."""

PANEL = 480  # side of each view, pixels
MARGIN = 56  # left, right and between the views
TOP = 48  # title and view captions
AXIS = 36  # tick labels below the views
LINE = 18  # legend line height
_NOTES = 2  # legend lines after the tubes
BACKGROUND = (255, 255, 255)
FILL_ALPHA = 36  # footprint fill opacity (0-255)
FRAME = (0, 0, 0)


@dataclass(frozen=True)
class DrawnBox:
    """One box drawn: ``tube`` index, ``view`` (``"tx"`` or ``"xy"``), ``kind`` (``"token"``: footprint,
    ``"part"``: an S2D part, ``"interpolated"``: the resized kernel), ``clip``: ``(u0, u1, v0, v1)`` in clip
    units (u horizontal: t for tx, x for xy; v vertical: x for tx, y for xy), ``pixels``: the same box in
    image pixels ``(left, top, right, bottom)``."""

    tube: int
    view: str
    kind: str
    clip: tuple[float, float, float, float]
    pixels: tuple[int, int, int, int]


@dataclass(frozen=True)
class DrawnCentre:
    """One centre dot: ``clip`` ``(u, v)`` in :func:`centers`' index units, ``pixel`` ``(x, y)``."""

    tube: int
    view: str
    clip: tuple[float, float]
    pixel: tuple[int, int]


@dataclass
class TubeDrawing:
    """What :func:`draw_tubes` wrote: the image ``size`` ``(width, height)``, the colour of each tube, the
    tokens per tube, and every box and centre it drew."""

    path: Path
    size: tuple[int, int]
    colours: list[tuple[int, int, int]]
    tokens: list[int]
    boxes: list[DrawnBox] = field(default_factory=list)
    centres: list[DrawnCentre] = field(default_factory=list)


def dot_radius(tube: int, num_tubes: int) -> int:
    """Radius in pixels of tube ``tube``'s centre dots: earlier tubes get larger dots (drawn first), so that
    coinciding centres of several tubes show as concentric rings. 3 to 6 pixels."""
    return 3 + max(0, min(num_tubes, 4) - 1 - tube)


def canvas_size(num_tubes: int) -> tuple[int, int]:
    """Image ``(width, height)`` in pixels for ``num_tubes`` tubes: two views side by side, the legend below."""
    width = 3 * MARGIN + 2 * PANEL
    height = TOP + PANEL + AXIS + LINE * (num_tubes + _NOTES) + LINE // 2
    return width, height


def _axis_boxes(
    n: int, o: int, s: int, k: int, f: int, pad: int, applied: int
) -> list[tuple[float, float, list[tuple[float, float]], tuple[float, float] | None]]:
    """Per position on one axis: footprint ``[a, b)``, S2D parts ``[(a, b), ...]`` and the interpolated
    kernel's extent (or None)."""
    out = []
    for i in range(n):
        start = o + i * s
        parts = [(start + j * s // f, start + j * s // f + k) for j in range(f)]
        end = parts[-1][1]
        interp = None if applied == k else (float(start - pad), float(end + pad))
        out.append((float(start), float(end), [(float(a), float(b)) for a, b in parts], interp))
    return out


def tube_boxes(spec: TubeSpec, frames: int, size: int) -> dict[str, list[tuple]]:
    """The projected geometry of ``spec`` on a ``frames x size x size`` clip, per view.

    Returns ``{"tx": [...], "xy": [...]}``; each entry is ``(footprint, parts, interpolated, centre)`` with
    footprint ``(u0, u1, v0, v1)``, parts a list of such boxes (one per S2D part on the view's axes; just
    the footprint without S2D), interpolated the resized kernel's box or None, and centre ``(u, v)`` in
    index units, taken from the model's :func:`centers`. Distinct projections only, in row-major order.
    Empty if the tube has no position.
    """
    gt, gh, gw = grid(spec, frames, size, size)
    if gt == 0:
        return {"tx": [], "xy": []}
    k, s, o, f, p = spec.weight_kernel, spec.stride, spec.offset, spec.s2d, spec.interp_pad
    axes = [_axis_boxes(n, o[a], s[a], k[a], f[a], p[a], spec.kernel[a]) for a, n in enumerate((gt, gh, gw))]
    c = centers(spec, frames, size, size).view(gt, gh, gw, 3)  # (t, y, x) per token
    # per view: (u axis, v axis, centre of grid cells (iu, iv) as (u, v))
    views = {
        "tx": (0, 2, lambda iu, iv: (float(c[iu, 0, iv, 0]), float(c[iu, 0, iv, 2]))),
        "xy": (2, 1, lambda iu, iv: (float(c[0, iv, iu, 2]), float(c[0, iv, iu, 1]))),
    }
    out: dict[str, list[tuple]] = {}
    for view, (ua, va, centre) in views.items():
        entries = []
        for iu, (u0, u1, uparts, uint) in enumerate(axes[ua]):
            for iv, (v0, v1, vparts, vint) in enumerate(axes[va]):
                parts = [(a, b, pc, d) for a, b in uparts for pc, d in vparts]
                interp = None
                if uint is not None or vint is not None:
                    ui = uint or (u0, u1)
                    vi = vint or (v0, v1)
                    interp = (ui[0], ui[1], vi[0], vi[1])
                entries.append(((u0, u1, v0, v1), parts, interp, centre(iu, iv)))
        out[view] = entries
    return out


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: the fixed bitmap font
        return ImageFont.load_default()


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], colour, dash: int = 4
) -> None:
    left, top, right, bottom = box
    for a, b, fixed, horizontal in (
        (left, right, top, True),
        (left, right, bottom, True),
        (top, bottom, left, False),
        (top, bottom, right, False),
    ):
        for start in range(a, b + 1, 2 * dash):
            end = min(start + dash, b)
            line = [(start, fixed), (end, fixed)] if horizontal else [(fixed, start), (fixed, end)]
            draw.line(line, fill=colour, width=1)


def _tube_label(i: int, spec: TubeSpec, tokens: int) -> str:
    def x(t: Sequence[int]) -> str:
        return "x".join(map(str, t))

    text = f"tube {i}: kernel {x(spec.weight_kernel)}, stride {x(spec.stride)}, offset {x(spec.offset)}"
    if spec.split > 1:
        text += f", S2D {x(spec.s2d)} ({spec.split} parts)"
    if spec.learned_kernel is not None:
        text += f", interpolated to {x(spec.kernel)} (dashed)"
    return text + (f": {tokens} tokens" if tokens else ": 0 tokens (skipped on this clip)")


def draw_tubes(
    specs: Sequence[TubeSpec], frames: int, size: int, out_path: str | Path, title: str | None = None
) -> TubeDrawing:
    """Draw where ``specs`` sample a ``frames x size x size`` clip and write a PNG to ``out_path``
    (atomically: a temporary name, then a rename).

    Returns the :class:`TubeDrawing` (image size, colours, tokens per tube, every box and centre drawn).

    Raises:
        ValueError: ``frames`` or ``size`` < 1, or no tube has a position on the clip.
    """
    if frames < 1 or size < 1:
        raise ValueError(f"frames and size must be >= 1, got {frames} and {size}")
    specs = tuple(specs)
    counts = token_counts(specs, frames, size, size)
    if sum(counts) == 0:
        raise ValueError(f"no tube has a position on a {frames}x{size}x{size} clip")
    out_path = Path(out_path)
    width, height = canvas_size(len(specs))
    colours = [PALETTE[i % len(PALETTE)] for i in range(len(specs))]
    drawing = TubeDrawing(path=out_path, size=(width, height), colours=colours, tokens=counts)
    image = Image.new("RGBA", (width, height), (*BACKGROUND, 255))
    draw = ImageDraw.Draw(image)
    font, small = _font(14), _font(12)

    origins = {"tx": (MARGIN, TOP), "xy": (2 * MARGIN + PANEL, TOP)}
    extents = {"tx": (frames, size), "xy": (size, size)}

    def to_px(view: str, u: float, v: float) -> tuple[int, int]:
        (ox, oy), (eu, ev) = origins[view], extents[view]
        return round(ox + u * PANEL / eu), round(oy + v * PANEL / ev)

    def box_px(view: str, b: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
        # clip to the panel: an interpolated kernel may reach past the clip (it reads replicated pixels)
        (eu, ev) = extents[view]
        left, top = to_px(view, max(b[0], 0.0), max(b[2], 0.0))
        right, bottom = to_px(view, min(b[1], eu), min(b[3], ev))
        return left, top, max(left, right - 1), max(top, bottom - 1)

    caption = title or f"{len(specs)} tubes on a {frames}x{size}x{size} clip: {sum(counts)} tokens"
    draw.text((MARGIN, 8), caption, fill=FRAME, font=font)
    for view, text in (
        ("tx", "t-x view (all y): t across (frames), x down (pixels)"),
        ("xy", "x-y view (all t): x across, y down (pixels)"),
    ):
        ox, oy = origins[view]
        draw.text((ox, oy - 20), text, fill=FRAME, font=small)
        draw.rectangle((ox - 1, oy - 1, ox + PANEL, oy + PANEL), outline=FRAME, width=1)
        eu, ev = extents[view]
        draw.text((ox, oy + PANEL + 4), "0", fill=FRAME, font=small)
        draw.text((ox + PANEL - 24, oy + PANEL + 4), str(eu), fill=FRAME, font=small)
        draw.text((ox - 30, oy + PANEL - 14), str(ev), fill=FRAME, font=small)

    geometry = [tube_boxes(spec, frames, size) for spec in specs]
    # boxes of the densest tubes first, so that sparse tubes stay visible; one translucent layer per tube
    for i in sorted(range(len(specs)), key=lambda j: -counts[j]):
        colour = colours[i]
        layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
        pen = ImageDraw.Draw(layer)
        for view, entries in geometry[i].items():
            for footprint, parts, interp, _ in entries:
                if interp is not None:
                    px = box_px(view, interp)
                    _dashed_rectangle(pen, px, (*colour, 255))
                    drawing.boxes.append(DrawnBox(i, view, "interpolated", interp, px))
                px = box_px(view, footprint)
                pen.rectangle(px, fill=(*colour, FILL_ALPHA), outline=(*colour, 255), width=2)
                drawing.boxes.append(DrawnBox(i, view, "token", footprint, px))
                if len(parts) > 1:
                    for part in parts:
                        ppx = box_px(view, part)
                        pen.rectangle(ppx, outline=(*colour, 255), width=1)
                        drawing.boxes.append(DrawnBox(i, view, "part", part, ppx))
        image.alpha_composite(layer)
    draw = ImageDraw.Draw(image)
    for i, geo in enumerate(geometry):  # centres on top of every box
        radius = dot_radius(i, len(specs))
        for view, entries in geo.items():
            for *_, (uc, vc) in entries:
                x, y = to_px(view, uc + 0.5, vc + 0.5)
                draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colours[i], outline=FRAME)
                drawing.centres.append(DrawnCentre(i, view, (uc, vc), (x, y)))

    y = TOP + PANEL + AXIS
    for i, spec in enumerate(specs):
        draw.rectangle((MARGIN, y + 3, MARGIN + 12, y + 15), fill=colours[i], outline=FRAME)
        draw.text((MARGIN + 20, y + 1), _tube_label(i, spec, counts[i]), fill=FRAME, font=small)
        y += LINE
    notes = (
        "solid box: a token's footprint (its kernel; S2D: the union of its parts); dot: the token's centre",
        "thin inner boxes: S2D parts (one token = the parts' channels concatenated); dashed: interpolated kernel",
    )
    for text in notes:
        draw.text((MARGIN, y + 1), text, fill=FRAME, font=small)
        y += LINE

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.tmp-{uuid.uuid4().hex}")
    try:
        image.convert("RGB").save(tmp, format="PNG")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return drawing
