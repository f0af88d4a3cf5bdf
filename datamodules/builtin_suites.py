"""The built-in downstream suites: real images split into ID tasks and shifted OOD test sets.

Every suite is written in the classification layout (``png`` + ``cls``) by
:func:`datamodules.builtin.prepare_builtin`; sizes below are those of the real files.

In-domain (ID) tasks, each with ``train`` / ``val`` / ``test``:

* ``fmnist_heldout``: Fashion-MNIST's official test file (``t10k``, never read by the built-in
  pre-training), cut by index at fractions 0.6 / 0.1 / 0.3: 6,000 / 1,000 / 3,000 images,
  10 classes. Keys ``fmnist-t10k-<index in the file>``.
* ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 images, values 0..16 scaled to 0..255),
  split by a permutation seeded with 0 into 1,000 / 200 / 597, 10 classes ``"0"``..``"9"``.
  Keys ``digits-<index>``.
* ``lfw_faces``: scikit-image's ``lfw_subset`` (200 25x25 images in [0, 1] scaled to 0..255;
  the first 100 are faces, label 1, the last 100 background patches, label 0), split by a
  permutation seeded with 0 into 120 / 30 / 50, classes ``["non-face", "face"]``.
  Keys ``lfw-<index>``.

Out-of-domain (OOD) task ``fmnist_shift``: ``train`` and ``val`` are the ``fmnist_heldout``
images (the clean source distribution); ``test`` is several named sets, each the 3,000
``fmnist_heldout`` test images under one deterministic shift, in the spirit of ImageNet-C. A
shifted image keeps the key of its source image, so the sets pair up by key. The shifts that
ImageNet-C has carry its names (``gaussian_noise``, ``gaussian_blur``, ``contrast``):

* ``clean``: unchanged;
* ``rotate``: rotated (bilinear, black fill) by ``s * (15 + 20 u1)`` degrees, ``s = -1`` when
  ``u2 < 0.5`` else ``+1``, with ``u1, u2`` uniforms drawn from a generator seeded by the key;
* ``invert``: ``255 - x``;
* ``gaussian_blur``: PIL ``GaussianBlur(radius=1.0)``;
* ``gaussian_noise``: ``clip(x + N(0, 40^2), 0, 255)`` rounded, the noise drawn from a
  generator seeded by the key;
* ``contrast``: ``77 + floor(0.4 x)``: the range 0..255 squeezed into 77..179.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from PIL import Image, ImageFilter

# (split name, samples, number of samples): what a suite hands to the shard writer
SplitData = tuple[str, Iterator[dict], int]

HELDOUT_FRACTIONS = (0.6, 0.1, 0.3)
DIGITS_COUNTS = (1000, 200, 597)
LFW_COUNTS = (120, 30, 50)
LFW_CLASSES = ("non-face", "face")
DIGITS_CLASSES = tuple(str(d) for d in range(10))
SPLIT_NAMES = ("train", "val", "test")


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def key_rng(key: str, stream: str) -> np.random.Generator:
    """A generator that depends only on ``(stream, key)``, identical in every process."""
    digest = hashlib.blake2b(f"{stream}\x00{key}".encode(), digest_size=8).digest()
    return np.random.default_rng(int.from_bytes(digest, "big"))


# --- shifts: uint8 (H, W) image and its key -> uint8 (H, W) image -------------------------------
def rotation_angle(key: str) -> float:
    """The signed angle in degrees of the ``rotate`` shift: magnitude in [15, 35]."""
    u1, u2 = key_rng(key, "rotate").random(2)
    return float((15 + 20 * u1) * (-1 if u2 < 0.5 else 1))


def rotate(pixels: np.ndarray, key: str) -> np.ndarray:
    image = Image.fromarray(pixels).rotate(rotation_angle(key), Image.BILINEAR, fillcolor=0)
    return np.asarray(image)


def invert(pixels: np.ndarray, key: str) -> np.ndarray:
    return 255 - pixels


def gaussian_blur(pixels: np.ndarray, key: str) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).filter(ImageFilter.GaussianBlur(radius=1.0)))


def gaussian_noise(pixels: np.ndarray, key: str) -> np.ndarray:
    noise = key_rng(key, "noise").normal(0.0, 40.0, pixels.shape)
    return np.clip(np.rint(pixels + noise), 0, 255).astype(np.uint8)


def contrast(pixels: np.ndarray, key: str) -> np.ndarray:
    return (77 + (2 * pixels.astype(np.uint16)) // 5).astype(np.uint8)


SHIFTS: dict[str, Callable[[np.ndarray, str], np.ndarray]] = {
    "clean": lambda pixels, key: pixels,
    "rotate": rotate,
    "invert": invert,
    "gaussian_blur": gaussian_blur,
    "gaussian_noise": gaussian_noise,
    "contrast": contrast,
}


# --- splits -------------------------------------------------------------------------------------
def fraction_split(n: int, fractions: Sequence[float]) -> list[np.ndarray]:
    """Consecutive index ranges covering ``range(n)``, cut at the cumulative fractions."""
    cuts = [0, *(round(c * n) for c in np.cumsum(fractions)[:-1]), n]
    return [np.arange(lo, hi) for lo, hi in itertools.pairwise(cuts)]


def seeded_split(n: int, counts: Sequence[int], seed: int = 0) -> list[np.ndarray]:
    """Disjoint sorted index sets of the given sizes from a permutation seeded with ``seed``."""
    assert sum(counts) == n, f"split sizes {counts} do not add up to {n}"
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([0, *counts])
    return [np.sort(order[lo:hi]) for lo, hi in itertools.pairwise(cuts)]


def classification_samples(
    images: np.ndarray,
    labels: np.ndarray,
    indices: np.ndarray,
    prefix: str,
    shift: Callable[[np.ndarray, str], np.ndarray] = SHIFTS["clean"],
) -> Iterator[dict]:
    """Samples ``{prefix}-<index:05d>`` with the (shifted) image as PNG and the label."""
    for index in indices:
        key = f"{prefix}-{index:05d}"
        png = png_bytes(shift(images[index], key))
        yield {"__key__": key, "png": png, "cls": str(int(labels[index]))}


def _splits(
    images: np.ndarray, labels: np.ndarray, parts: list[np.ndarray], prefix: str
) -> Iterator[SplitData]:
    for split, indices in zip(SPLIT_NAMES, parts, strict=False):
        yield split, classification_samples(images, labels, indices, prefix), len(indices)


def heldout_splits(images: np.ndarray, labels: np.ndarray) -> Iterator[SplitData]:
    """``fmnist_heldout`` from the ``t10k`` images and labels."""
    parts = fraction_split(len(labels), HELDOUT_FRACTIONS)
    yield from _splits(images, labels, parts, "fmnist-t10k")


def shift_splits(images: np.ndarray, labels: np.ndarray) -> Iterator[SplitData]:
    """``fmnist_shift``: the heldout train and val, then one ``test_<shift>`` split per shift."""
    train, val, test = fraction_split(len(labels), HELDOUT_FRACTIONS)
    yield from _splits(images, labels, [train, val], "fmnist-t10k")
    for name, shift in SHIFTS.items():
        samples = classification_samples(images, labels, test, "fmnist-t10k", shift)
        yield f"test_{name}", samples, len(test)


def digits_splits() -> Iterator[SplitData]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)
    yield from _splits(images, digits.target, seeded_split(len(images), DIGITS_COUNTS), "digits")


def lfw_splits() -> Iterator[SplitData]:
    from skimage.data import lfw_subset

    images = np.rint(np.clip(lfw_subset(), 0, 1) * 255).astype(np.uint8)
    labels = np.r_[np.ones(100, dtype=np.int64), np.zeros(len(images) - 100, dtype=np.int64)]
    yield from _splits(images, labels, seeded_split(len(images), LFW_COUNTS), "lfw")
