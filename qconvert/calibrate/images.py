"""A folder of images -> one image input's samples: decoded, resized, scaled and normalized.

Two layouts of the folder are read. Images directly in it are unlabelled. Images in class
subfolders (ImageNet's `train/<class>/<image>` layout, searched recursively below each class
folder) are labelled with the index of their folder among the sorted subfolder names, so that a
classifier trained with torchvision's `ImageFolder` gets the same class ids. Order is always the
sorted paths, so `--samples N` takes the same N images on every machine.

Images are decoded one at a time (JPEGs at a reduced scale where that still covers the target
size) and written into one preallocated array, so a folder of large photos never sits in memory
at full size. Pillow is imported only when a folder is actually read.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconvert.calibrate.readers import ModelInput
from qconvert.errors import CalibrationError
from qconvert.settings import IMAGE_LAYOUTS, DataOptions

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})


@dataclass(frozen=True)
class ImageGeometry:
    """What the model input wants: channel count (1 = grayscale, 3 = RGB), size, and layout."""

    channels: int
    height: int
    width: int
    layout: str  # nchw | nhwc

    @property
    def mode(self) -> str:
        """The Pillow mode the images are converted to."""
        return "L" if self.channels == 1 else "RGB"

    def array_shape(self, n: int) -> tuple[int, int, int, int]:
        if self.layout == "nchw":
            return (n, self.channels, self.height, self.width)
        return (n, self.height, self.width, self.channels)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def image_files(folder: Path, where: str) -> tuple[list[Path], np.ndarray | None, list[str]]:
    """(sorted image paths, class id per image or None, class names): images directly in `folder`,
    or in its class subfolders, never both."""
    direct = sorted(f for f in folder.iterdir() if _is_image(f))
    class_dirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    per_class = [sorted(f for f in d.rglob("*") if _is_image(f)) for d in class_dirs]
    in_classes = sum(len(files) for files in per_class)
    if direct and in_classes:
        raise CalibrationError(
            f"{where}: holds {len(direct)} image(s) directly and {in_classes} in subfolders. Put every image "
            "in a class subfolder (labels come from the sorted subfolder names) or none in subfolders "
            "(unlabelled)."
        )
    if direct:
        return direct, None, []
    if not in_classes:
        raise CalibrationError(
            f"{where}: the folder has no .npy or .npz files and no images ({', '.join(sorted(IMAGE_SUFFIXES))}), "
            "directly or in class subfolders."
        )
    names = [d.name for d in class_dirs]
    empty = [n for n, files in zip(names, per_class, strict=True) if not files]
    if empty:
        log.warning("%s: class folder(s) without images keep their class ids: %s", where, ", ".join(empty))
    files = [f for class_files in per_class for f in class_files]
    labels = np.concatenate(
        [np.full(len(class_files), i, dtype=np.int64) for i, class_files in enumerate(per_class)]
    )
    log.info("%s: %d images in %d classes (ids in sorted order): %s", where, len(files), len(names), names)
    return files, labels, names


def geometry_for_input(inp: ModelInput, options: DataOptions, where: str) -> ImageGeometry:
    """Check that `inp` can take images laid out as `options` says, and resolve its size."""
    layout = options.layout
    if layout not in IMAGE_LAYOUTS:
        raise CalibrationError(f"{where}: layout {layout!r} is not one of {', '.join(IMAGE_LAYOUTS)}.")
    if len(inp.dims) != 4:
        raise CalibrationError(
            f"{where}: an image folder feeds a 4-D image input ([N, C, H, W] or [N, H, W, C]); input "
            f"'{inp.name}' takes samples of shape {inp.sample_shape()}. Give a .npz instead."
        )
    if not np.issubdtype(np.dtype(inp.dtype), np.floating):
        raise CalibrationError(
            f"{where}: input '{inp.name}' is {inp.dtype}; image folders produce float pixels (scaled to "
            "[0, 1], then --mean/--std). Give the inputs as a .npz instead."
        )
    c_axis, hw_axes = (1, (2, 3)) if layout == "nchw" else (3, (1, 2))
    channels = inp.dims[c_axis]
    if channels not in (1, 3, None):
        other = "nhwc" if layout == "nchw" else "nchw"
        other_channels = inp.dims[3 if layout == "nchw" else 1]
        if other_channels in (1, 3):
            raise CalibrationError(
                f"{where}: --layout {layout}: input '{inp.name}' has shape [?, {inp.sample_shape()[1:]}, which "
                f"looks {other.upper()} (the {other_channels} channels {'last' if other == 'nhwc' else 'first'}). "
                f"Pass --layout {other}."
            )
        raise CalibrationError(
            f"{where}: input '{inp.name}' has {channels} channels on the {layout.upper()} channel axis; an "
            "image folder gives 1 (grayscale) or 3 (RGB). Give the inputs as a .npz instead."
        )
    if channels is None:
        log.info("%s: input '%s' does not fix its channel count; reading RGB", where, inp.name)
        channels = 3
    model_hw = (inp.dims[hw_axes[0]], inp.dims[hw_axes[1]])
    size = options.image_size
    if size is None:
        if model_hw[0] is None or model_hw[1] is None:
            raise CalibrationError(
                f"{where}: input '{inp.name}' does not fix its height and width (samples "
                f"{inp.sample_shape()}), so the images' size is unknown. Pass --image-size HxW."
            )
        size = (model_hw[0], model_hw[1])
    elif any(m is not None and m != s for m, s in zip(model_hw, size, strict=True)):
        shown = "x".join("?" if m is None else str(m) for m in model_hw)
        raise CalibrationError(
            f"{where}: --image-size {size[0]}x{size[1]} does not fit input '{inp.name}', which takes {shown} "
            f"images ({layout.upper()}, samples {inp.sample_shape()}). Drop --image-size or pass {shown}."
        )
    return ImageGeometry(channels, size[0], size[1], layout)


def _per_channel(values: tuple[float, ...] | None, flag: str, channels: int, default: float) -> np.ndarray:
    if values is None:
        return np.full(channels, default, dtype=np.float32)
    if len(values) not in (1, channels):
        raise CalibrationError(
            f"{flag} has {len(values)} values but the images have {channels} channel(s) "
            f"({'grayscale' if channels == 1 else 'RGB'}): give one value per channel, or one for all."
        )
    if flag == "--std" and any(v <= 0 for v in values):
        raise CalibrationError(f"--std {values}: every value must be greater than 0.")
    return np.broadcast_to(np.asarray(values, dtype=np.float32), (channels,)).copy()


def _decode(path: Path, geometry: ImageGeometry, where: str) -> np.ndarray:
    """One image as float32 [H, W, C] with values 0..255, at the target size."""
    from PIL import Image

    target = (geometry.width, geometry.height)  # Pillow sizes are (width, height)
    try:
        with Image.open(path) as im:
            im.draft(geometry.mode, target)  # JPEG only: decode at the smallest scale still >= target
            pixels = im.convert(geometry.mode)
            if pixels.size != target:
                pixels = pixels.resize(target, Image.Resampling.BILINEAR)
            array = np.asarray(pixels, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise CalibrationError(
            f"{where}: cannot read the image {path} ({type(e).__name__}: {e}). Replace or remove the file."
        ) from e
    return array[..., None] if array.ndim == 2 else array


def read_image_folder(
    folder: Path,
    inputs: Sequence[ModelInput],
    options: DataOptions,
    where: str,
    samples: int | None = None,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """The images in `folder` (the first `samples` in sorted order) as the single input's array,
    ((x / 255) - mean) / std per channel, and the class ids when the folder has class subfolders."""
    files, labels, _ = image_files(folder, where)
    if len(inputs) != 1:
        raise CalibrationError(
            f"{where}: an image folder feeds a single-input model; this one has inputs "
            f"{[i.name for i in inputs]}. Give a .npz keyed by input name, or a file.py:callable."
        )
    inp = inputs[0]
    geometry = geometry_for_input(inp, options, where)
    mean = _per_channel(options.mean, "--mean", geometry.channels, 0.0)
    std = _per_channel(options.std, "--std", geometry.channels, 1.0)
    if samples is not None:
        files = files[:samples]
        labels = None if labels is None else labels[:samples]
    out = np.empty(geometry.array_shape(len(files)), dtype=np.dtype(inp.dtype))
    for i, path in enumerate(files):
        pixels = _decode(path, geometry, where)
        pixels /= 255.0
        pixels -= mean
        pixels /= std
        out[i] = pixels.transpose(2, 0, 1) if geometry.layout == "nchw" else pixels
    log.info(
        "%s: read %d image(s) as %s %dx%d, %s",
        where,
        len(files),
        geometry.mode,
        geometry.height,
        geometry.width,
        geometry.layout,
    )
    return {inp.name: out}, labels
