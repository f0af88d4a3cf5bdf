"""SVE, LSVR and the other spectrum metrics of a frozen backbone's features on shard sets, offline.

The NMTune analysis of a feature space (see ``callbacks/spectrum.py`` for the metrics), run on
any backbone: one a training run exported (``--card``), a timm model (``--timm``) or an open_clip
model (``--open-clip``). Each set is streamed through the suite's evaluation pipeline into a
Gram matrix, so memory stays ``O(D^2)`` however many samples there are; labels and captions are
read but not used.

Usage::

    python scripts/spectrum.py --card runs/fs/version_0/export/card.json \\
        --shards val=data/pets/pets-val-{0000..0003}.tar --image-size 32 --crop-pct 1.0
    python scripts/spectrum.py --timm resnet50 --weights resnet50.safetensors \\
        --shards pets=data/pets/pets-val-{0000..0003}.tar --shards flowers=data/flowers/val-0000.tar
    python scripts/spectrum.py --open-clip ViT-B-16 --pretrained open_clip_model.safetensors \\
        --shards data/cc3m/cc3m-val-{0000..0009}.tar --image-text --max-samples 10000 \\
        --protocol official

``--protocol paper`` (the default: rows L2-normalised, no centring) or ``official`` (rows
normalised, then each row's own mean subtracted, as the official NMTune analysis), or the
preprocessing itself (``--no-normalize-rows``, ``--center [none|column|row]``). It prints a table
and writes ``--out`` (JSON): the backbone identity, ``spectrum`` (the protocol: its name,
``normalize_rows``, ``center``), the other options, and per set ``num_samples``, ``sve``,
``lsvr``, ``erank``, ``stable_rank``, ``alpha_req`` (null where undefined) and the
``singular_values``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from callbacks.spectrum import (
    CENTER_MODES,
    METRIC_NAMES,
    PROTOCOLS,
    GramAccumulator,
    SpectrumProtocol,
    resolve_protocol,
)
from datamodules.errors import ConfigError
from datamodules.formats import ClassificationFormat, ImageTextFormat
from datamodules.pipeline import EpochLoader, ShardStream
from datamodules.shards import ShardSpec, parse_shards
from datamodules.transforms import TransformConfig
from lightning_modules.backbones import Backbone, BackboneConfig
from train import exit_on_user_mistake

NAMED_SPEC = re.compile(r"^([\w.-]+)=(.+)$")
NO_LABEL_BOUND = sys.maxsize  # labels are not used, so by default none is out of range


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--card", help="card.json (or its folder) that a training run exported")
    source.add_argument("--timm", metavar="NAME", help="timm model name")
    source.add_argument("--open-clip", metavar="NAME", help="open_clip model name")
    parser.add_argument(
        "--weights", help="with --timm: weights file (default: timm's hub weights, online only)"
    )
    parser.add_argument(
        "--model-kwargs",
        type=json.loads,
        default=None,
        metavar="JSON",
        help="with --timm: extra timm.create_model arguments, e.g. '{\"img_size\": 32}'",
    )
    parser.add_argument(
        "--pretrained",
        metavar="TAG_OR_FILE",
        help="with --open-clip: pretrained tag (needs the hub) or weights file",
    )
    parser.add_argument(
        "--shards",
        action="append",
        required=True,
        metavar="[NAME=]SPEC",
        help="shard spec of one set, optionally named; repeat for several sets\n"
        "(default name: the folder holding the shards)",
    )
    parser.add_argument("--shards-name", help="name of the set when a single --shards is unnamed")
    parser.add_argument(
        "--image-text", action="store_true", help="image-caption shards (default: classification)"
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        metavar="K",
        help="skip samples whose label is outside [0, K), as training would (default: no check)",
    )
    parser.add_argument(
        "--max-samples", type=positive_int, metavar="N", help="stop each set after N samples"
    )
    parser.add_argument("--batch-size", type=positive_int, default=256)
    parser.add_argument(
        "--image-size",
        type=positive_int,
        metavar="S",
        help="input side in pixels (default: the backbone's); set what the model trained at",
    )
    parser.add_argument(
        "--crop-pct",
        type=float,
        default=TransformConfig.crop_pct,
        help="evaluation centre-crop fraction (default: %(default)s; 1.0 keeps the whole image)",
    )
    parser.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        help="preprocessing by name: paper (rows L2-normalised; the default) or official\n"
        "(rows normalised, then each row's own mean subtracted, as the official analysis)",
    )
    parser.add_argument(
        "--no-normalize-rows",
        dest="normalize_rows",
        action="store_const",
        const=False,
        help="keep feature norms (default: L2-normalise each sample's features)",
    )
    parser.add_argument(
        "--center",
        nargs="?",
        const="column",
        choices=CENTER_MODES,
        help="centre the features: column (alone: the column mean, a PCA spectrum), row (each\n"
        "row's own mean) or none (the default)",
    )
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--allow-shard-commands",
        action="store_true",
        help="let webdataset open pipe:/http/s3... URLs by running a command",
    )
    parser.add_argument("--out", default="spectrum.json", help="JSON output (default: %(default)s)")
    return parser


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parsed options; a model option given with another model source is refused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.weights or args.model_kwargs) and not args.timm:
        parser.error("--weights and --model-kwargs go with --timm")
    if args.pretrained and not args.open_clip:
        parser.error("--pretrained goes with --open-clip")
    if args.open_clip and not args.pretrained:
        parser.error("--open-clip needs --pretrained TAG_OR_FILE (a tag such as openai, or a file)")
    try:
        args.spectrum = resolve_protocol(args.protocol, args.normalize_rows, args.center)
    except ValueError as err:
        parser.error(str(err))
    return args


def load_backbone(args: argparse.Namespace) -> tuple[Backbone, dict[str, Any]]:
    """The backbone named on the command line, and that naming (its config) for the JSON."""
    weights = str(Path(args.weights).resolve()) if args.weights else True
    config = BackboneConfig(
        card=str(Path(args.card).resolve()) if args.card else None,
        timm=args.timm,
        open_clip=args.open_clip,
        pretrained=weights if args.timm else args.pretrained or False,
        model_kwargs=args.model_kwargs,
    )
    source = {name: value for name, value in asdict(config).items() if value not in (None, False)}
    return config.build(), source


def shard_sets(args: argparse.Namespace) -> dict[str, ShardSpec]:
    """``--shards [NAME=]SPEC`` values as named, parsed specs (missing local shards fail here)."""
    pairs = [_name_and_spec(value) for value in args.shards]
    unnamed = sum(name is None for name, _ in pairs)
    if args.shards_name and unnamed != 1:
        raise ConfigError(
            f"--shards-name names a single unnamed --shards, but {unnamed} are unnamed; "
            "name each set as --shards NAME=SPEC"
        )
    named = [(name or args.shards_name or _folder_name(spec), spec) for name, spec in pairs]
    names = [name for name, _ in named]
    twice = [name for name in names if names.count(name) > 1]
    if twice:
        raise ConfigError(f"two shard sets are named {twice[0]!r}; use --shards NAME=SPEC")
    return {
        name: parse_shards(spec, allow_commands=args.allow_shard_commands, count_samples=False)
        for name, spec in named
    }


def _name_and_spec(value: str) -> tuple[str | None, str]:
    match = NAMED_SPEC.match(value)
    return (match.group(1), match.group(2)) if match else (None, value)


def _folder_name(spec: str) -> str:
    first = spec.split("::")[0].partition("|")[0].strip()
    return Path(first).parent.name or "shards"


def _no_tokens(captions: list[str]) -> torch.Tensor:
    """Captions are not used: skip tokenising them."""
    return torch.zeros(len(captions), 0, dtype=torch.long)


def set_loader(spec: ShardSpec, args: argparse.Namespace, backbone: Backbone) -> EpochLoader:
    """Each sample of ``spec`` once, through the evaluation transform the backbone expects."""
    transform = TransformConfig(
        image_size=args.image_size or backbone.image_size,
        normalization=backbone.normalization,
        crop_pct=args.crop_pct,
    ).build(training=False)
    if args.image_text:
        sample_format = ImageTextFormat(transform, _no_tokens)
    else:
        sample_format = ClassificationFormat(args.num_classes or NO_LABEL_BOUND, transform)
    stream = ShardStream(spec, sample_format, args.batch_size, training=False)
    return EpochLoader(stream, args.workers)


@torch.inference_mode()
def set_spectrum(backbone: Backbone, spec: ShardSpec, args: argparse.Namespace) -> dict:
    """Stream one set's features into a Gram matrix; its spectrum and sample count."""
    protocol: SpectrumProtocol = args.spectrum
    gram = GramAccumulator(backbone.dim, protocol.normalize_rows, protocol.center)
    gram = gram.to(args.device)
    for batch in set_loader(spec, args, backbone):
        images = batch["image"]
        if args.max_samples:
            images = images[: args.max_samples - gram.num_samples]
        gram.update(backbone(images.to(args.device)).float())
        if args.max_samples and gram.num_samples >= args.max_samples:
            break
    if gram.num_samples == 0:
        fields = "captions" if args.image_text else "labels (cls)"
        raise ConfigError(f"no usable sample in {spec.spec}: check it holds images and {fields}")
    metrics = gram.spectrum()
    return {
        "shards": spec.spec,
        "num_samples": gram.num_samples,
        # JSON has no NaN: an undefined metric (alpha_req of rank-one features) is null
        **{name: metrics[name] if math.isfinite(metrics[name]) else None for name in METRIC_NAMES},
        "singular_values": metrics["singular_values"].tolist(),
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Shards are checked before the (slow) backbone loads; then one pass per set."""
    sets = shard_sets(args)
    backbone, source = load_backbone(args)
    backbone.to(args.device)
    image_size = args.image_size or backbone.image_size
    protocol = args.spectrum.info()
    print(
        f"backbone {backbone.identity} (dim {backbone.dim}), {image_size} px, "
        f"{backbone.normalization} normalization, on {args.device}; spectrum protocol "
        f"{protocol['protocol']} (normalize_rows {protocol['normalize_rows']}, "
        f"center {protocol['center']})"
    )
    print(f"{'set':<20} {'samples':>9}" + "".join(f" {name:>11}" for name in METRIC_NAMES))
    results = {}
    for name, spec in sets.items():
        result = set_spectrum(backbone, spec, args)
        results[name] = result
        values = "".join(_cell(result[metric]) for metric in METRIC_NAMES)
        print(f"{name:<20} {result['num_samples']:>9}{values}")
    return {
        "backbone": {"identity": backbone.identity, "dim": backbone.dim, **source},
        "spectrum": protocol,
        "options": {
            "image_size": image_size,
            "normalization": backbone.normalization,
            "crop_pct": args.crop_pct,
            "max_samples": args.max_samples,
            "image_text": args.image_text,
        },
        "sets": results,
    }


def _cell(value: float | None) -> str:
    return f" {'n/a':>11}" if value is None else f" {value:>11.4f}"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    with exit_on_user_mistake():
        report = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
