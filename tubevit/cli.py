"""The ``tubevit`` command.

``tubevit describe --variant base --tubes paper --frames 32 --size 224 --json`` prints, for one clip of
``frames x size x size`` RGB: tokens per tube and in total, parameters (total, tubes, encoder, heads, with
the heads split into the MAP pool and the classifiers), GMACs of one forward pass (``FlopCounterMode`` on
the meta device under the MATH SDPA backend; MACs = FLOPs / 2), and the same figures for a dense
ViViT-style 2x16x16 tubelet tokenisation of the same clip. ``--tubes`` takes a set name or an inline JSON
list of ``{kernel, stride, offset, s2d}`` specs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from tubevit.model.tubes import TubeSpec, TubeSpecError, dense_tubes, parse_tubes, token_counts
from tubevit.model.tubevit import VARIANTS, count_macs, create_model, parameter_counts

__all__ = ["describe", "main"]


def _parse_heads(text: str) -> dict[str, int]:
    heads: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, num = part.partition("=")
        if not name or not num.isdigit() or int(num) < 1:
            raise argparse.ArgumentTypeError(f"expected name=classes[,name=classes...], got {part!r}")
        heads[name] = int(num)
    if not heads:
        raise argparse.ArgumentTypeError("at least one head is needed, e.g. imagenet=1000")
    return heads


def _parse_tubes(text: str) -> tuple[TubeSpec, ...]:
    value: Any = text
    if text.lstrip().startswith("["):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"--tubes is not valid JSON: {exc}") from None
    try:
        return parse_tubes(value)
    except TubeSpecError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _figures(variant: str, specs: Sequence[TubeSpec], heads: dict[str, int], frames: int, size: int) -> dict:
    counts = token_counts(specs, frames, size, size)
    if sum(counts) == 0:
        raise ValueError(f"no tube has a position on a {frames}x{size}x{size} clip")
    with torch.device("meta"):
        model = create_model(variant, specs, heads)
    macs = count_macs(model, (1, 3, frames, size, size), next(iter(heads)))
    return {
        "tubes": [s.to_dict() for s in specs],
        "tokens": {"per_tube": counts, "total": sum(counts)},
        "params": parameter_counts(model),
        "gmacs": macs / 1e9,
    }


def describe(
    variant: str,
    tubes: str | Sequence[TubeSpec | dict],
    frames: int,
    size: int,
    heads: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Tokens, parameters and GMACs of TubeViT-``variant`` with ``tubes`` on one ``frames x size^2`` clip,
    and of the same encoder with dense 2x16x16 tubelets (``dense``); ``gmac_ratio`` = ours / dense.

    Heads default to ImageNet (1000) and Kinetics-600 (600). GMACs are per clip (batch 1), one view.
    """
    heads = heads or {"imagenet": 1000, "kinetics": 600}
    specs = parse_tubes(tubes)
    ours = _figures(variant, specs, heads, frames, size)
    dense = _figures(variant, dense_tubes((min(2, frames), 16, 16)), heads, frames, size)
    return {
        "variant": variant,
        "input": {"frames": frames, "height": size, "width": size, "channels": 3},
        "heads": heads,
        **ours,
        "dense": dense,
        "gmac_ratio": ours["gmacs"] / dense["gmacs"],
    }


def _print_table(info: dict[str, Any]) -> None:
    inp = info["input"]
    print(f"TubeViT-{info['variant']} on {inp['frames']}x{inp['height']}x{inp['width']}")
    print(
        f"{'':12} {'tokens':>8} {'params (M)':>11} {'tubes (M)':>10} {'encoder (M)':>12} {'heads (M)':>10} {'GMACs':>9}"
    )
    for name, fig in (("tubes", info), ("dense 2x16²", info["dense"])):
        p = fig["params"]
        print(
            f"{name:12} {fig['tokens']['total']:>8} {p['total'] / 1e6:>11.2f} {p['tubes'] / 1e6:>10.2f} "
            f"{p['encoder'] / 1e6:>12.2f} {p['heads'] / 1e6:>10.2f} {fig['gmacs']:>9.2f}"
        )
    print(f"tokens per tube: {info['tokens']['per_tube']}; GMAC ratio tubes/dense: {info['gmac_ratio']:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tubevit", description="TubeViT model tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    d = sub.add_parser("describe", help="tokens, parameters and GMACs of a TubeViT (and of dense tubelets)")
    d.add_argument("--variant", default="base", choices=sorted(VARIANTS))
    d.add_argument("--tubes", default="paper", type=_parse_tubes, help="set name or JSON list of specs")
    d.add_argument("--frames", type=int, default=32, help="clip length T (1 = an image)")
    d.add_argument("--size", type=int, default=224, help="frame side in pixels (H = W)")
    d.add_argument(
        "--heads", type=_parse_heads, default={"imagenet": 1000, "kinetics": 600}, help="name=classes,..."
    )
    d.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    if args.frames < 1 or args.size < 1:
        parser.error(f"--frames and --size must be >= 1, got {args.frames} and {args.size}")
    try:
        info = describe(args.variant, args.tubes, args.frames, args.size, args.heads)
    except ValueError as exc:
        print(f"tubevit describe: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        _print_table(info)
    return 0


if __name__ == "__main__":
    sys.exit(main())
