"""Image-ViT weights into TubeViT, and image-to-video scaling (paper §3.6, Eq. 8).

**Loading an image ViT** (:func:`load_image_vit`). timm (``patch_embed.proj``, ``blocks.N.*``, ``norm``) and
torchvision (``conv_proj``, ``encoder.layers.encoder_layer_N.*``, ``encoder.ln``) key layouts are mapped
onto TubeViT's names. The 2D patch embedding becomes the image tube (temporal kernel 1; copied exactly
when the kernel sizes agree); every other tube is initialised from it by a spatial resize with
:func:`tubevit.model.tubes.resize_kernel` and temporal inflation (repeated over ``t`` and divided by ``t``).
An S2D tube has ``D/S`` output channels and takes the first ``D/S`` rows of the 2D kernel. The source's
``cls_token``, ``pos_embed``, ``head.*`` (timm) and ``class_token``, ``encoder.pos_embedding``,
``heads.*`` (torchvision) are dropped by name; any other unmatched source key, and any missing encoder key
(image tube, blocks, final norm), is an error that lists them. The MAP head and the classifiers keep their
initialisation.

**Image-to-video scaling** (:func:`scale_image_to_video`): a large model (e.g. an image-pretrained ViT-H
loaded as above) takes the tubes of a smaller trained TubeViT.
- Integer width ratio ``r = D_large / D_small`` (tiny->small 2, small->base 2, tiny->base 4): each tube's
  S2D factor is multiplied by ``r`` (``(1, 2, 2)`` for 4, ``(2, 1, 1)`` for 2, ...), so the large tube has
  ``D_large / (S r) = D_small / S`` channels per part: exactly the small tube's weight, copied.
- Other ratios (base->large 4/3, large->huge 5/4, base->huge 5/3; the paper is silent): the small tubes are
  copied unchanged and followed by a learned linear map ``D_small -> D_large`` initialised to ``[I; 0]``
  (``tube_proj``; our choice, docs/design.md).
Then the tokenizer and blocks ``[0, freeze_before)`` are frozen (``requires_grad=False``) and the gated
skip ``z_s = MLP(LN(y_s)) + y_s + tanh(alpha) * z_0`` (``alpha`` = 0 at init) feeds blocks ``[s, depth)``,
where ``y_s`` is the output of block ``s - 1`` and ``z_0`` the encoder input.

**``tube_proj`` with frozen blocks** (``tube_proj_grad``, only with the linear map and ``freeze_before > 0``).
If ``tube_proj`` trained while the blocks before ``s`` are frozen, ``z_0`` would need a gradient, and
autograd would keep the activations of every frozen block and back-propagate through them: most of the
paper's training-cost saving lost (26 of 32 blocks for H). So:
- ``frozen`` (default): ``tube_proj`` is frozen at its ``[I; 0]`` initialisation with the tubes; nothing
  before the gate needs a gradient.
- ``gate``: ``tube_proj`` trains from the gate's ``tanh(alpha) * z_0`` term only; the blocks before the
  gate take ``z_0`` detached (:attr:`TubeViT.detach_stem`), so they still run without a backward.
- ``full``: ``tube_proj`` trains with the full gradient, back-propagating through the frozen blocks.
With ``freeze_before == 0`` nothing is frozen and ``tube_proj`` trains with the full gradient.
"""

from __future__ import annotations

import itertools
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn

from tubevit.model.tubes import SparseTubeTokenizer, TubeSpec, resize_kernel
from tubevit.model.tubevit import TubeViT

__all__ = [
    "TUBE_PROJ_GRAD",
    "ConversionError",
    "LoadReport",
    "apply_scaling_record",
    "detect_layout",
    "image_vit_state_dict",
    "inflate_kernel",
    "load_image_vit",
    "load_initial_weights",
    "read_state_dict",
    "scale_image_to_video",
    "scaling_record",
]

log = logging.getLogger(__name__)

Layout = Literal["auto", "timm", "torchvision"]
TubeProjGrad = Literal["frozen", "gate", "full"]
TUBE_PROJ_GRAD: tuple[str, ...] = ("frozen", "gate", "full")

DROPPED = {
    "timm": (re.compile(r"^(cls_token|pos_embed|head\..*)$"),),
    "torchvision": (re.compile(r"^(class_token|encoder\.pos_embedding|heads\..*)$"),),
}

_TV_BLOCK = {
    "ln_1": "norm1",
    "ln_2": "norm2",
    "self_attention.in_proj_weight": "attn.qkv.weight",
    "self_attention.in_proj_bias": "attn.qkv.bias",
    "self_attention.out_proj.weight": "attn.proj.weight",
    "self_attention.out_proj.bias": "attn.proj.bias",
    "mlp.0": "mlp.fc1",
    "mlp.3": "mlp.fc2",
    "mlp.linear_1": "mlp.fc1",  # torchvision < 0.13 names
    "mlp.linear_2": "mlp.fc2",
}


class ConversionError(ValueError):
    """A state dict that does not map onto the model: unknown, missing or mis-shaped keys (all listed)."""


@dataclass
class LoadReport:
    """What :func:`load_image_vit` did, by TubeViT key (``dropped``: source keys)."""

    copied: list[str] = field(default_factory=list)  # exact copies (blocks, norm, the image tube)
    inflated: list[str] = field(default_factory=list)  # tube weights made from the 2D patch embedding
    dropped: list[str] = field(default_factory=list)  # source keys dropped by name
    kept_init: list[str] = field(default_factory=list)  # model keys left at their initialisation


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read a checkpoint's state dict (``.safetensors``, or a torch file read with ``weights_only=True``);
    a ``{"model": ...}`` / ``{"state_dict": ...}`` wrapper is unwrapped."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping):
        raise ConversionError(
            f"{path}: expected a state dict (a mapping of tensors), got {type(obj).__name__}"
        )
    return dict(obj)


def detect_layout(state_dict: Mapping[str, Tensor]) -> Literal["timm", "torchvision"]:
    """``timm`` if the dict has ``patch_embed.proj.weight``, ``torchvision`` if ``conv_proj.weight``."""
    if "patch_embed.proj.weight" in state_dict:
        return "timm"
    if "conv_proj.weight" in state_dict:
        return "torchvision"
    raise ConversionError(
        "not an image-ViT state dict in timm (patch_embed.proj.weight) or torchvision (conv_proj.weight) "
        f"layout; first keys: {list(state_dict)[:5]}"
    )


def image_vit_state_dict(
    state_dict: Mapping[str, Tensor], layout: Layout = "auto"
) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an image ViT's keys to timm/TubeViT names.

    Returns:
        ``(mapped, dropped)``: ``mapped`` has ``patch.weight`` ``(D, C, P, P)``, ``patch.bias`` ``(D,)``,
        ``blocks.N.*`` and ``norm.*``; ``dropped`` lists the source keys dropped by name.

    Raises:
        ConversionError: source keys that are neither mapped nor dropped (all listed).
    """
    if layout == "auto":
        layout = detect_layout(state_dict)
    mapped: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    for key, value in state_dict.items():
        if any(p.match(key) for p in DROPPED[layout]):
            dropped.append(key)
            continue
        new = _rename_timm(key) if layout == "timm" else _rename_torchvision(key)
        if new is None:
            unknown.append(key)
        else:
            mapped[new] = value
    if unknown:
        raise ConversionError(f"unexpected keys in the {layout} state dict: {', '.join(unknown)}")
    return mapped, dropped


_TIMM_BLOCK = re.compile(
    r"^blocks\.\d+\.(norm1|norm2)\.(weight|bias)$|^blocks\.\d+\.(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$"
)


def _rename_timm(key: str) -> str | None:
    if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        return "patch." + key.rsplit(".", 1)[1]
    if key in ("norm.weight", "norm.bias") or _TIMM_BLOCK.match(key):
        return key
    return None


def _rename_torchvision(key: str) -> str | None:
    if key in ("conv_proj.weight", "conv_proj.bias"):
        return "patch." + key.rsplit(".", 1)[1]
    if key in ("encoder.ln.weight", "encoder.ln.bias"):
        return "norm." + key.rsplit(".", 1)[1]
    m = re.match(r"^encoder\.layers\.encoder_layer_(\d+)\.(.+)$", key)
    if not m:
        return None
    index, rest = m.groups()
    for old, new in _TV_BLOCK.items():
        if rest == old or rest.startswith(old + "."):
            return f"blocks.{index}.{new}{rest[len(old) :]}"
    return None


def inflate_kernel(weight: Tensor, kernel: tuple[int, int, int]) -> Tensor:
    """A 3D tube kernel from a 2D patch kernel.

    Args:
        weight: ``(O, C, h, w)`` (or ``(O, C, 1, h, w)``) 2D kernel.
        kernel: target ``(t, h', w')``.

    Returns:
        ``(O, C, t, h', w')``: spatially resized with :func:`resize_kernel` (response to a constant frame
        kept), repeated over ``t`` and divided by ``t``, so a static clip gives the 2D response.
    """
    if weight.ndim == 4:
        weight = weight.unsqueeze(2)  # (O, C, h, w) -> (O, C, 1, h, w)
    t, h, w = kernel
    spatial = resize_kernel(weight, (1, h, w))
    return spatial.repeat(1, 1, t, 1, 1) / t


@torch.no_grad()
def load_image_vit(model: TubeViT, state_dict: Mapping[str, Tensor], layout: Layout = "auto") -> LoadReport:
    """Load an image ViT's weights into ``model`` in place (see the module docstring).

    Raises:
        ConversionError: unexpected source keys, missing encoder keys (image tube, blocks, final norm) or
            mismatched shapes; every offending key is listed.
    """
    mapped, dropped = image_vit_state_dict(state_dict, layout)
    report = LoadReport(dropped=dropped)
    own = model.state_dict()
    encoder_keys = [k for k in own if k.startswith(("blocks.", "norm."))]
    missing = [k for k in encoder_keys if k not in mapped]
    if "patch.weight" not in mapped:
        missing.append("patch.weight (the patch embedding)")
    extra = [k for k in mapped if k != "patch.weight" and k != "patch.bias" and k not in own]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected keys (no such layer in the model): {', '.join(extra)}")
        raise ConversionError("; ".join(parts))
    bad = [
        f"{k} {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in encoder_keys
        if mapped[k].shape != own[k].shape
    ]
    if bad:
        raise ConversionError(f"shape mismatch: {', '.join(bad)}")
    patch_w, patch_b = mapped["patch.weight"], mapped.get("patch.bias")
    if patch_w.ndim != 4 or patch_w.shape[1] != model.tokenizer.in_chans:
        raise ConversionError(
            f"patch embedding weight has shape {tuple(patch_w.shape)}; expected (D, {model.tokenizer.in_chans}, P, P)"
        )
    for key in encoder_keys:
        own[key].copy_(mapped[key])
        report.copied.append(key)
    for i, tube in enumerate(model.tokenizer.tubes):
        conv = tube.proj
        out_ch = conv.weight.shape[0]
        if patch_w.shape[0] < out_ch:
            raise ConversionError(
                f"tokenizer.tubes.{i}: patch embedding has {patch_w.shape[0]} channels, the tube needs {out_ch}"
            )
        kernel = tube.spec.weight_kernel
        exact = kernel[0] == 1 and tuple(patch_w.shape[2:]) == kernel[1:] and out_ch == patch_w.shape[0]
        conv.weight.copy_(inflate_kernel(patch_w[:out_ch].float(), kernel).to(conv.weight.dtype))
        name = f"tokenizer.tubes.{i}.proj.weight"
        (report.copied if exact else report.inflated).append(name)
        if conv.bias is not None:
            if patch_b is not None:
                conv.bias.copy_(patch_b[:out_ch])
                (report.copied if exact else report.inflated).append(f"tokenizer.tubes.{i}.proj.bias")
            else:
                conv.bias.zero_()
    done = set(report.copied) | set(report.inflated)
    report.kept_init = [k for k in own if k not in done]
    log.info(
        "loaded image ViT: %d copied, %d inflated, %d dropped, %d kept at init",
        len(report.copied),
        len(report.inflated),
        len(report.dropped),
        len(report.kept_init),
    )
    return report


def _extra_split(spec: TubeSpec, ratio: int) -> TubeSpec | None:
    """``spec`` with its S2D factor multiplied by ``ratio`` (spatially square splits first), or None."""
    options = [
        (a, b, c) for a, b, c in itertools.product(range(1, ratio + 1), repeat=3) if a * b * c == ratio
    ]
    options.sort(key=lambda e: (e[1] != e[2], e[0]))
    for extra in options:
        s2d = tuple(f * e for f, e in zip(spec.s2d, extra, strict=True))
        if all(s % f == 0 for s, f in zip(spec.stride, s2d, strict=True)):
            return TubeSpec(spec.kernel, spec.stride, spec.offset, s2d, spec.learned_kernel)
    return None


@torch.no_grad()
def scale_image_to_video(
    small: TubeViT,
    large: TubeViT,
    scale_from_layer: int,
    *,
    freeze_before: int | None = None,
    width_map: Literal["auto", "s2d", "linear"] = "auto",
    gated: bool = True,
    tube_proj_grad: TubeProjGrad = "frozen",
) -> TubeViT:
    """Give ``large`` (e.g. an image-pretrained ViT loaded with :func:`load_image_vit`) the tubes of the
    trained ``small`` TubeViT, freeze its early layers and add the gated skip (paper §3.6, Eq. 8).

    Args:
        small: trained TubeViT whose tube weights are copied (not modified).
        large: the model to change in place; its encoder, norm, pool and heads are kept.
        scale_from_layer: ``s``: the gate takes the output of block ``s - 1`` and feeds block ``s``.
        freeze_before: the tokenizer and blocks ``[0, freeze_before)`` get ``requires_grad=False``
            (default ``s``; 0 freezes nothing).
        width_map: ``auto`` (S2D for integer width ratios, else linear), ``s2d`` (error unless the ratio is
            an integer and every tube's stride allows the split) or ``linear``.
        gated: add the ``tanh(alpha) * z_0`` term (``False``: the same block without the gate).
        tube_proj_grad: how the linear width map trains when blocks are frozen: ``frozen`` (at ``[I; 0]``),
            ``gate`` (through the gate's ``z_0`` term only; the frozen blocks see ``z_0`` detached) or
            ``full`` (back-propagating through the frozen blocks); see the module docstring.

    Returns:
        ``large``.

    Raises:
        ValueError: ``s`` out of range, or ``width_map="s2d"`` impossible (names the tube and the ratio).
    """
    d_small, d_large = small.embed_dim, large.embed_dim
    depth = len(large.blocks)
    if not 1 <= scale_from_layer <= depth:
        raise ValueError(f"scale_from_layer must be in [1, {depth}], got {scale_from_layer}")
    freeze_before = scale_from_layer if freeze_before is None else freeze_before
    if not 0 <= freeze_before <= depth:
        raise ValueError(f"freeze_before must be in [0, {depth}], got {freeze_before}")
    if tube_proj_grad not in TUBE_PROJ_GRAD:
        raise ValueError(f"tube_proj_grad must be one of {TUBE_PROJ_GRAD}, got {tube_proj_grad!r}")
    in_chans = small.tokenizer.in_chans
    device = large.norm.weight.device

    specs: list[TubeSpec] | None = None
    if width_map in ("auto", "s2d") and d_large % d_small == 0:
        ratio = d_large // d_small
        mapped = [_extra_split(s, ratio) for s in small.tubes]
        if all(m is not None for m in mapped):
            specs = mapped  # type: ignore[assignment]
        elif width_map == "s2d":
            bad = [str(s) for s, m in zip(small.tubes, mapped, strict=True) if m is None]
            raise ValueError(
                f"width ratio {ratio}: no S2D split of {ratio} divides the stride of tube(s) {bad}"
            )
    elif width_map == "s2d":
        raise ValueError(
            f"width {d_small} -> {d_large} is not an integer ratio; S2D cannot map it (use width_map='linear')"
        )

    if specs is not None:
        tokenizer = SparseTubeTokenizer(specs, d_large, in_chans).to(device)
        large.tube_proj = None
    else:
        tokenizer = SparseTubeTokenizer(small.tubes, d_small, in_chans).to(device)
        proj = nn.Linear(d_small, d_large, bias=False).to(device)
        proj.weight.copy_(torch.eye(d_large, d_small))  # [I; 0]
        large.tube_proj = proj
    for new, old in zip(tokenizer.tubes, small.tokenizer.tubes, strict=True):
        if new.proj.weight.shape != old.proj.weight.shape:  # cannot happen by construction
            raise AssertionError(
                f"{new.spec}: {tuple(new.proj.weight.shape)} != {tuple(old.proj.weight.shape)}"
            )
        new.proj.weight.copy_(old.proj.weight)
        new.proj.bias.copy_(old.proj.bias)
    large.tokenizer = tokenizer

    large.add_gate(scale_from_layer, gated=gated)
    large.detach_stem = False
    if freeze_before > 0:
        for p in large.tokenizer.parameters():
            p.requires_grad_(False)
        for block in large.blocks[:freeze_before]:
            for p in block.parameters():
                p.requires_grad_(False)
        if large.tube_proj is not None and tube_proj_grad == "frozen":
            large.tube_proj.weight.requires_grad_(False)
        large.detach_stem = large.tube_proj is not None and tube_proj_grad == "gate"
    log.info(
        "image-to-video scaling: width %d -> %d by %s, gate at layer %d, %d blocks frozen%s",
        d_small,
        d_large,
        "S2D" if specs is not None else "linear map",
        scale_from_layer,
        freeze_before,
        f", tube_proj {tube_proj_grad}" if large.tube_proj is not None and freeze_before > 0 else "",
    )
    return large


def scaling_record(model: TubeViT) -> dict[str, int | bool | None] | None:
    """What a scaled model has beyond its config (``None`` if it has no gate): ``{"gate_index": s,
    "gated": bool, "tube_dim": D_small or None}``. With :func:`apply_scaling_record` it rebuilds the same
    structure (for a strict ``load_state_dict``)."""
    if model.gate is None:
        return None
    return {
        "gate_index": model.gate_index,
        "gated": model.gate.alpha is not None,
        "tube_dim": model.tokenizer.embed_dim if model.tube_proj is not None else None,
    }


def apply_scaling_record(model: TubeViT, record: Mapping[str, int | bool | None]) -> TubeViT:
    """Give ``model`` (built from the scaled model's config: its variant and written-out tubes) the gate
    and, for a linear width map, the ``tube_dim`` tokenizer and ``tube_proj`` of :func:`scaling_record`.
    Weights are left at their initialisation: load them next. Returns ``model``."""
    tube_dim = record.get("tube_dim")
    if tube_dim is not None:
        device = model.norm.weight.device
        model.tokenizer = SparseTubeTokenizer(model.tubes, int(tube_dim), model.tokenizer.in_chans).to(device)
        model.tube_proj = nn.Linear(int(tube_dim), model.embed_dim, bias=False).to(device)
    model.add_gate(int(record["gate_index"]), gated=bool(record["gated"]))
    return model


def _is_tubevit_state(state: Mapping[str, Tensor]) -> bool:
    return any(k.startswith("tokenizer.tubes.") for k in state)


@torch.no_grad()
def load_initial_weights(model: TubeViT, state_dict: Mapping[str, Tensor]) -> LoadReport:
    """Start ``model`` from ``state_dict``: an image ViT (timm or torchvision layout, through
    :func:`load_image_vit`) or a TubeViT state dict (same architecture: every non-head key must match in
    name and shape; heads are copied where a head of the same name and shape exists, else kept at init).

    Raises:
        ConversionError: keys or shapes that do not fit (all listed).
    """
    if not _is_tubevit_state(state_dict):
        return load_image_vit(model, state_dict)
    own = model.state_dict()
    report = LoadReport()
    missing = [k for k in own if not k.startswith("heads.") and k not in state_dict]
    unexpected = [k for k in state_dict if not k.startswith("heads.") and k not in own]
    bad = [
        f"{k} {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state_dict.items()
        if not k.startswith("heads.") and k in own and v.shape != own[k].shape
    ]
    if missing or unexpected or bad:
        parts = [
            f"{what}: {', '.join(keys)}"
            for what, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatch", bad),
            )
            if keys
        ]
        raise ConversionError("TubeViT weights do not fit the model; " + "; ".join(parts))
    for key, value in state_dict.items():
        if key in own and own[key].shape == value.shape:
            own[key].copy_(value)
            report.copied.append(key)
        else:
            report.dropped.append(key)  # a head this run does not have (or of another size)
    report.kept_init = [k for k in own if k not in set(report.copied)]
    log.info(
        "loaded TubeViT weights: %d copied, %d heads dropped, %d kept at init",
        len(report.copied),
        len(report.dropped),
        len(report.kept_init),
    )
    return report
