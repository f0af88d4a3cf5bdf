"""Write your own images into webdataset shards that this suite (and timm, open_clip) can read.

Two inputs, two layouts:

* ``folder``: an image-folder tree (``ROOT/<class_name>/<images>``, as torchvision's
  ImageFolder reads it) -> classification shards in timm's layout (image + ``cls``). Classes
  are the sorted sub-folder names; ``_info.json`` records ``num_classes`` and ``class_names``.
* ``csv``: a CSV of image paths and captions -> image-text shards in img2dataset's layout
  (image + ``txt`` + ``json``).

Every image is decoded once with PIL; unreadable or missing files, non-image files and empty
captions are skipped and counted. JPEG, PNG and WebP bytes are stored as they are; other formats
PIL reads (BMP, GIF, TIFF...) are re-encoded to PNG. Beside the shards, timm's ``_info.json``
and webdataset's ``sizes.json`` count the samples of every shard (open_clip's trainer reads the
latter). The last lines printed give the shard spec to put in the data config.

Usage::

    python scripts/write_shards.py folder /data/pets/train data/pets --split train
    python scripts/write_shards.py folder /data/pets/val data/pets --split val --no-shuffle
    python scripts/write_shards.py csv /data/captions.csv data/captions --split train \\
        --path-column filepath --caption-column title --root /data/images
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import random
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

Sample = dict[str, Any]
Skip = tuple[str, str]
# PIL format -> webdataset extension for the formats every reader decodes; others become png.
# MPO is how PIL names the multi-picture JPEGs of many cameras: plain JPEG to other decoders.
KEPT_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp"}
PNG_MODES = {"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"}


class InputError(ValueError):
    """The input (folder, CSV, output folder) cannot be used; the message says why."""


@dataclass
class Source:
    """Samples to write (read lazily), the number of inputs for the progress bar, and the
    extra ``_info.json`` entries."""

    samples: Iterator[Sample | Skip]
    total: int
    info: dict[str, Any] = field(default_factory=dict)


def encode_image(path: Path) -> tuple[str, bytes]:
    """``(extension, bytes)`` of a fully decoded image, so a corrupt file fails here and not in
    training. Raises whatever PIL raises for unreadable data."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.format in KEPT_FORMATS:
            return KEPT_FORMATS[image.format], data
        if image.mode not in PNG_MODES:
            image = image.convert("RGB")
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return "png", buffer.getvalue()


def sample_key(relative: Path) -> str:
    """``<class>/<stem>`` with dots made ``_``: webdataset splits a member name at the first dot
    of its base name, and ``/`` keeps the key readable as the file's place in the tree."""
    return "/".join(relative.with_suffix("").parts).replace(".", "_")


def class_folders(root: Path) -> list[str]:
    """Sorted sub-folder names, hidden ones such as .ipynb_checkpoints left out."""
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise InputError(f"no class sub-folders in {root}; expected ROOT/<class_name>/<images>")
    return classes


def label_space(source: Path) -> list[str]:
    """The class names of a full label space: an ``_info.json``'s ``class_names``, or the
    sorted class sub-folders of a folder tree (e.g. ImageNet's train folder)."""
    if source.is_file():
        names = json.loads(source.read_text()).get("class_names")
        if not names:
            raise InputError(f"{source} has no class_names to index the classes by")
        return list(names)
    return class_folders(source)


def list_folder(
    root: Path, space: list[str] | None = None
) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and every file below them with its class index: the index in ``space``
    when given (every class folder must be in it), else in the sorted folder names."""
    classes = class_folders(root)
    index = {name: i for i, name in enumerate(space or classes)}
    if missing := [name for name in classes if name not in index]:
        raise InputError(
            f"class folders {missing[:5]} of {root} are not in the label space given by "
            "--class-names-from"
        )
    files = [
        (path, index[name])
        for name in classes
        for path in sorted((root / name).rglob("*"))
        if path.is_file()
    ]
    return classes, files


def folder_samples(
    root: str | Path, seed: int = 0, shuffle: bool = True, space: list[str] | None = None
) -> Source:
    """Classification samples from an image-folder tree, shuffled with ``seed`` unless told not
    to: class-sorted shards would leave the training shard shuffle with single-class shards.
    With a label ``space`` (e.g. ImageNet-A's 200 class folders indexed by ImageNet's 1000),
    labels are indices into it and ``info["class_subset"]`` lists the indices present."""
    root = Path(root)
    classes, files = list_folder(root, space)
    readable = {ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN}
    keyed, used = [], set()
    for path, label in files:
        key = base = sample_key(path.relative_to(root))
        copy = 0
        while key in used:  # e.g. img.jpg and img.png in one folder
            copy += 1
            key = f"{base}_{copy}"
        used.add(key)
        keyed.append((key, path, label))
    if shuffle:
        random.Random(seed).shuffle(keyed)

    def samples() -> Iterator[Sample | Skip]:
        for key, path, label in keyed:
            if path.suffix.lower() not in readable:
                yield "not_an_image", str(path)
                continue
            try:
                ext, data = encode_image(path)
            except Exception:  # PIL raises many types for corrupt data
                yield "unreadable", str(path)
                continue
            yield {"__key__": key, ext: data, "cls": str(label)}

    info: dict[str, Any] = {"num_classes": len(classes), "class_names": classes}
    if space is not None:
        info = {
            "num_classes": len(space),
            "class_names": space,
            "class_subset": sorted(space.index(name) for name in classes),
        }
    return Source(samples(), len(keyed), info)


def csv_samples(
    csv_path: str | Path,
    root: str | Path | None = None,
    path_column: str = "path",
    caption_column: str = "caption",
) -> Source:
    """Image-text samples from a CSV; relative paths resolve against ``root`` (default: the
    CSV's folder). Keys are the row numbers, so they stay stable when rows are skipped."""
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(f"CSV file not found: {csv_path}")
    base = Path(root) if root is not None else csv_path.parent
    with csv_path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        found = ", ".join(reader.fieldnames or []) or "none"
        for column, option in (path_column, "--path-column"), (caption_column, "--caption-column"):
            if column not in (reader.fieldnames or []):
                raise InputError(
                    f"column {column!r} not in {csv_path} (columns found: {found}); "
                    f"name the right one with {option}"
                )
        rows = [(row[path_column] or "", row[caption_column] or "") for row in reader]

    def samples() -> Iterator[Sample | Skip]:
        for index, (original, caption) in enumerate(rows):
            path = base / original
            caption = caption.strip()
            if not path.is_file():
                yield "missing_file", str(path)
                continue
            if not caption:
                yield "empty_caption", str(path)
                continue
            try:
                ext, data = encode_image(path)
            except Exception:  # PIL raises many types for corrupt data
                yield "unreadable", str(path)
                continue
            meta = json.dumps({"path": original, "caption": caption})
            yield {"__key__": f"{index:09d}", ext: data, "txt": caption, "json": meta}

    return Source(samples(), len(rows))


def prepare_out_dir(out_dir: Path, split: str, info: dict[str, Any], overwrite: bool) -> None:
    """Refuse to mix a new split with old shards, and train/val class lists that disagree
    (labels are indices into the class list, so they would silently mean different classes)."""
    old = sorted(out_dir.glob(f"{split}-*.tar"))
    if old and not overwrite:
        raise InputError(
            f"{len(old)} {split} shards already in {out_dir}; pass --overwrite to replace them"
        )
    for path in old:
        path.unlink()
    info_path = out_dir / "_info.json"
    current = json.loads(info_path.read_text()) if info_path.is_file() else {}
    known, others = current.get("class_names"), set(current.get("splits", {})) - {split}
    if known is not None and others and "class_names" in info and known != info["class_names"]:
        raise InputError(
            f"the class folders ({len(info['class_names'])}) differ from the class_names "
            f"({len(known)}) of the other splits in {info_path}; give every split the same "
            "class sub-folders (an empty folder is fine) or write it to another OUT_DIR"
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run it with `folder --help` or `csv --help` for each layout's options.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="{folder,csv}")

    def add_common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("out_dir", metavar="OUT_DIR", type=Path, help="where the shards go")
        sub.add_argument(
            "--split", default="train", help="split name, the shard prefix (default: train)"
        )
        sub.add_argument(
            "--samples-per-shard",
            type=int,
            default=5000,
            metavar="N",
            help="samples in each shard; training wants >= ranks x workers shards (default: 5000)",
        )
        sub.add_argument(
            "--overwrite", action="store_true", help="replace existing shards of this split"
        )

    folder = commands.add_parser(
        "folder",
        help="image-folder tree -> classification shards (timm layout)",
        description="ROOT/<class_name>/<images> -> OUT_DIR/{split}-NNNN.tar with image + cls. "
        "Class indices follow the sorted sub-folder names.",
    )
    folder.add_argument("root", metavar="ROOT", type=Path, help="folder with one folder per class")
    add_common(folder)
    folder.add_argument(
        "--seed", type=int, default=0, help="seed of the sample shuffle (default: 0)"
    )
    folder.add_argument(
        "--class-names-from",
        type=Path,
        metavar="SPACE",
        help="index the classes by a larger label space: an _info.json with class_names or a "
        "folder tree (e.g. ImageNet's train folder, for ImageNet-A/-R's 200 class folders); "
        "writes OUT_DIR/<split>_class_subset.json for data.class_subsets",
    )
    folder.add_argument(
        "--no-shuffle",
        dest="shuffle",
        action="store_false",
        help="keep the sorted (class by class) order instead of shuffling",
    )

    table = commands.add_parser(
        "csv",
        help="CSV of image paths and captions -> image-text shards (img2dataset layout)",
        description="CSV rows (image path, caption) -> OUT_DIR/{split}-NNNN.tar with image + txt "
        "+ json. Keys are the CSV row numbers.",
    )
    table.add_argument("csv", metavar="CSV", type=Path, help="CSV file with a header row")
    add_common(table)
    table.add_argument("--path-column", default="path", help="image path column (default: path)")
    table.add_argument(
        "--caption-column", default="caption", help="caption column (default: caption)"
    )
    table.add_argument(
        "--root",
        dest="image_root",
        type=Path,
        help="folder for relative image paths (default: the CSV's folder)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.samples_per_shard < 1:
        parser.error(f"--samples-per-shard must be positive, got {args.samples_per_shard}")
    try:
        if args.command == "folder":
            space = label_space(args.class_names_from) if args.class_names_from else None
            source = folder_samples(args.root, args.seed, args.shuffle, space)
        else:
            source = csv_samples(args.csv, args.image_root, args.path_column, args.caption_column)
        prepare_out_dir(args.out_dir, args.split, source.info, args.overwrite)
    except InputError as err:
        parser.error(str(err))
    # Imported only now: the datamodules package loads lightning (seconds), which --help and
    # input errors should not wait for.
    from datamodules.writer import write_split

    class_subset = source.info.pop("class_subset", None)
    summary = write_split(
        source.samples,
        args.out_dir,
        args.split,
        args.samples_per_shard,
        total=source.total,
        info=source.info,
    )
    print(summary.describe())
    if not summary.num_samples:
        sys.exit(
            f"error: no usable sample in {args.root if args.command == 'folder' else args.csv}"
        )
    option = f"data.{args.split}_shards" if args.split in ("train", "val", "test") else "shards"
    print(f"use: {option}: {summary.spec(args.out_dir)}")
    if "num_classes" in source.info:
        print(f"use: data.num_classes: {source.info['num_classes']}")
    if class_subset is not None:  # per split, so not in the shared _info.json
        subset_file = args.out_dir / f"{args.split}_class_subset.json"
        subset_file.write_text(json.dumps(class_subset))
        print(f"use: data.class_subsets: {{<set name>: {subset_file}}}")


if __name__ == "__main__":
    main()
