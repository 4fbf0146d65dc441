"""The ``tubevit`` command: ``describe``, ``predict``, ``export`` and ``tubes``.

``tubevit describe --variant base --tubes paper --frames 32 --size 224 --json`` prints, for one clip of
``frames x size x size`` RGB: tokens per tube and in total, parameters (total, tubes, encoder, heads, with
the heads split into the MAP pool and the classifiers), GMACs of one forward pass (``FlopCounterMode`` on
the meta device under the MATH SDPA backend; MACs = FLOPs / 2), and the same figures for a dense
ViViT-style 2x16x16 tubelet tokenisation of the same clip. ``--tubes`` takes a set name or an inline JSON
list of ``{kernel, stride, offset, s2d}`` specs (``"s2d": null`` is the same as no ``s2d``).

``tubevit predict --model models/ssv2 clip.mp4 [more.mp4 ...] [--views 4x3] [--json]`` samples each video
file as evaluation does, at the model's trained fps and size (:mod:`tubevit.predict`), and prints the top-5
classes with their probabilities (multi-label heads: per-class sigmoid scores). A file that cannot be read
is reported on stderr with its reason; the exit status is 1 if any file failed.

``tubevit export --model DIR --out DIR2`` writes the bundle as ``model.safetensors`` + ``config.json`` and
checks that the reloaded model gives identical logits (:func:`tubevit.bundle.export_model`).

``tubevit tubes --tubes paper --frames 32 --size 224 --out tubes.png`` draws where every tube samples the
clip (:func:`tubevit.viz.draw_tubes`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

import torch

from tubevit.config.model import drop_null_keys
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
        return parse_tubes(drop_null_keys(value))
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
    specs = parse_tubes(drop_null_keys(tubes))
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


def _print_prediction(pred, classes: Sequence[str]) -> None:
    v = pred.video
    what = "sigmoid score" if pred.multilabel else "probability"
    print(
        f"{pred.path}: {v.source_duration:.1f} s at {v.source_fps:.3g} fps, {v.source_size[0]}x{v.source_size[1]}"
        f"{f' rotated {v.rotation}' if v.rotation else ''}; decoded {v.num_frames} frames at {v.fps:g} fps"
        f"{' (truncated)' if v.truncated else ''}; head {pred.head}, {pred.views[0]}x{pred.views[1]} views"
    )
    for rank, (index, name, score) in enumerate(pred.top, start=1):
        print(f"  {rank}. {name:<32} {score:.4f}  ({what}, class {index})")


def _predict(args: argparse.Namespace) -> int:
    from tubevit.bundle import load_model
    from tubevit.predict import MAX_SECONDS, VideoError, choose_head, predict_file

    try:
        bundle = load_model(args.model)
        head = choose_head(bundle, args.head)
    except (FileNotFoundError, ValueError) as exc:
        print(f"tubevit predict: {exc}", file=sys.stderr)
        return 2
    classes = bundle.classes[head]
    results, failed = [], 0
    for path in args.videos:
        try:
            pred = predict_file(
                bundle,
                path,
                head=head,
                views=args.views,
                top=args.top,
                fps=args.fps,
                short_side=args.short_side,
                max_seconds=args.max_seconds or MAX_SECONDS,
            )
        except VideoError as exc:
            print(f"tubevit predict: {exc}", file=sys.stderr)
            failed += 1
            continue
        except ValueError as exc:  # no fps in the bundle
            print(f"tubevit predict: {args.model}: {exc}", file=sys.stderr)
            return 2
        if args.json:
            results.append(pred.to_dict(classes))
        else:
            _print_prediction(pred, classes)
    if args.json:
        print(json.dumps(results, indent=2))
    return 1 if failed else 0


def _export(args: argparse.Namespace) -> int:
    from tubevit.bundle import ExportError, export_model

    try:
        report = export_model(args.model, args.out)
    except (FileNotFoundError, ValueError, ExportError) as exc:
        print(f"tubevit export: {exc}", file=sys.stderr)
        return 1
    diffs = ", ".join(f"{ds}: max |diff| {d:g}" for ds, d in report["heads"].items())
    print(
        f"wrote {report['weights']} ({report['tensors']} tensors) and config.json; logits identical ({diffs})"
    )
    return 0


def _tubes(args: argparse.Namespace) -> int:
    from tubevit.viz import draw_tubes

    try:
        drawing = draw_tubes(args.tubes, args.frames, args.size, args.out)
    except ValueError as exc:
        print(f"tubevit tubes: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out} ({drawing.size[0]}x{drawing.size[1]}): tokens per tube {drawing.tokens}, "
        f"{sum(drawing.tokens)} in all"
    )
    return 0


def _views(text: str) -> tuple[int, int]:
    from tubevit.predict import parse_views

    try:
        return parse_views(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive(kind: type):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
        return value

    return parse


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

    p = sub.add_parser(
        "predict",
        help="classify video files with a model bundle",
        description="Sample each video as evaluation does (at the model's trained fps and size) and print "
        "the top classes.",
        epilog="example: tubevit predict --model models/ssv2 clip.mp4 other.mkv --views 4x3 --json",
    )
    p.add_argument(
        "--model", required=True, help="a model folder (config.json + model.pt or model.safetensors)"
    )
    p.add_argument("videos", nargs="+", help="video files (any container ffmpeg reads)")
    p.add_argument("--views", type=_views, default=(4, 3), help="temporal x spatial views (default 4x3)")
    p.add_argument("--head", help="the head (dataset) to use when the model has several")
    p.add_argument("--top", type=int, default=5, help="classes to print (default 5)")
    p.add_argument("--fps", type=_positive(float), help="override the trained fps of config.json")
    p.add_argument("--short-side", type=_positive(int), help="override the decoded short side (pixels)")
    p.add_argument(
        "--max-seconds", type=_positive(float), help="decode at most this many seconds of each file (600)"
    )
    p.add_argument("--json", action="store_true", help="print a JSON list, one object per file")

    e = sub.add_parser(
        "export",
        help="write a bundle as model.safetensors + config.json (no pickle) and check the round trip",
        epilog="example: tubevit export --model models/finetune-ssv2 --out export/ssv2",
    )
    e.add_argument("--model", required=True, help="the model folder to export")
    e.add_argument("--out", required=True, help="the folder to write")

    t = sub.add_parser(
        "tubes",
        help="draw where every tube samples a clip (PNG)",
        epilog="example: tubevit tubes --tubes paper --frames 32 --size 224 --out tubes.png",
    )
    t.add_argument("--tubes", default="paper", type=_parse_tubes, help="set name or JSON list of specs")
    t.add_argument("--frames", type=_positive(int), default=32, help="clip length T")
    t.add_argument("--size", type=_positive(int), default=224, help="frame side in pixels (H = W)")
    t.add_argument("--out", required=True, help="the PNG to write")
    args = parser.parse_args(argv)

    if args.command == "predict":
        if args.top < 1:
            parser.error(f"--top must be >= 1, got {args.top}")
        return _predict(args)
    if args.command == "export":
        return _export(args)
    if args.command == "tubes":
        return _tubes(args)
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
