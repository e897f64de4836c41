"""Real photographs for calibration and held-out measurement, from files that installed packages ship.

    python benchmarks/photos.py [--resolution 240] [--out DIR]   # prints the manifest, writes .npz

Sources (whatever of these is installed is used; every image names its file and package):
- pip: scikit-learn (china.jpg, flower.jpg), matplotlib (grace_hopper.jpg), scikit-image's bundled
  data (`pip install --no-deps scikit-image` is enough: only its image files are read)
- Debian: the photographs among lomiri-wallpapers-16.04 / -20.04, mate-backgrounds (nature/),
  plasma-workspace-wallpapers, lxqt-themes (wallpapers/), palapeli-data (the puzzle collection) and
  opencv-doc (the sample photographs of examples/data, hfs/, reg/ and text/):
      apt-get install --no-install-recommends lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 \
          mate-backgrounds plasma-workspace-wallpapers lxqt-themes palapeli-data opencv-doc
  Illustrations, renders, logos, paintings, drawings, synthetic test patterns, blurred copies and
  second views of one scene (aero3, aloeR, graf3, leuvenB, the chessboard series past left01, ...) in
  those packages are left out by name (the lists below), so only distinct photographs count.
  Looked at and holding no photograph: gnome-backgrounds 43, ukui-wallpapers, desktop-base,
  sway-backgrounds, mypaint-data-extras (paper textures), lomiri-wallpapers (one render).

The split is by source photo, never by crop: a photo goes to the held-out side when the first byte
of sha1(name) is below HELDOUT_SHARE * 256, else to calibration, so a crop of one photo can never
be on both sides, and the assignment does not depend on which other packages are installed.
Each photo gives several square crops (the standard centre crop, then seeded crops of 40-80% of
the shorter side at seeded positions), resized with bicubic antialiasing to the model's
resolution. Crops of one photo are correlated: a figure over the held-out crops must resample
photos, not crops, for its interval (`photo_ids`; bench_accuracy.py's clustered bootstrap), since
qconvert's own intervals treat every sample as independent. EfficientNet-Lite's preprocessing is (pixel - 127) / 128 per channel (the Lite
builder's MEAN_RGB/STDDEV_RGB), NCHW float32.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HELDOUT_SHARE = 0.6
MEAN, STD = 127.0, 128.0

# (package, folder relative to the package or absolute, file names that are photographs)
_PIP = {
    "sklearn": ("datasets/images", ("china.jpg", "flower.jpg")),
    "matplotlib": ("mpl-data/sample_data", ("grace_hopper.jpg",)),
    "skimage": (
        "data",
        (
            "astronaut.png",
            "chelsea.png",
            "coffee.png",
            "motorcycle_left.png",  # motorcycle_right is the same scene: left only
            "rocket.jpg",
            "hubble_deep_field.jpg",
            "ihc.png",
            "retina.jpg",
            "camera.png",  # the grayscale photographs, replicated to three channels
            "coins.png",
            "moon.png",
            "brick.png",
            "grass.png",
            "gravel.png",
        ),
    ),
}
_DEBIAN = {
    "lomiri-wallpapers": (
        "/usr/share/backgrounds",
        (
            "Bridge_by_Sander_Klootwijk.jpg",
            "Dragonfly_by_Bolly.jpg",
            "Infinite-Sea_by_Aury88.jpg",
            "Kleiber_by_Lukas_Baubkus.jpg",
            "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg",
            "Wine_by_Jakkub_Mede.jpg",
            "aitzgorri_by_Aitzol_Berasategi.jpg",
            "analogpattern_by_Peter_Nerlich.jpg",
            "free_by_Peter_Nerlich.jpg",
            "friends_by_Aitzol_Berasategi.jpg",
            "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg",
            "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg",
        ),
    ),
    "mate-backgrounds": (
        "/usr/share/backgrounds/mate/nature",
        (
            "Aqua.jpg",
            "Blinds.jpg",
            "Dune.jpg",
            "FreshFlower.jpg",
            "Garden.jpg",
            "GreenMeadow.jpg",
            "LadyBird.jpg",
            "RainDrops.jpg",
            "Storm.jpg",
            "TwoWings.jpg",
            "Wood.jpg",
            "YellowFlower.jpg",
        ),
    ),
    # plasma: one folder per wallpaper, several sizes of the same photo inside (the largest is used)
    "plasma-workspace-wallpapers": (
        "/usr/share/wallpapers",
        (
            "BytheWater",
            "ColdRipple",
            "ColorfulCups",
            "DarkestHour",
            "EveningGlow",
            "FallenLeaf",
            "Grey",
            "Kite",
            "OneStandsOut",
            "Path",
            "Volna",
            "summer_1am",
        ),
    ),
    "lxqt-themes": (
        "/usr/share/lxqt/wallpapers",
        (
            "Butterfly-Kenneth-Wimer.jpg",
            "Valendas.png",
            "after-the-rain.jpg",
            "appleflower.png",
            "beam.png",
            "butterfly.png",
            "cloud.png",
            "drop.png",
            "flowers.png",
            "fog.jpg",
            "this-is-not-windows.jpg",
        ),
    ),
    "palapeli-data": (
        "/usr/share/palapeli/collection",
        (
            "castle-maintenon.jpg",
            "cincinnati-bridge.jpg",
            "citrus-fruits.jpg",
            "european-honey-bee.jpg",
            "panther-chameleon-female.jpg",
        ),
    ),
    "opencv-doc": (
        "/usr/share/doc/opencv-doc/examples",
        (
            "data/aero1.jpg",
            "data/aloeL.jpg",
            "data/apple.jpg",
            "data/baboon.jpg",
            "data/basketball1.png",
            "data/board.jpg",
            "data/box_in_scene.png",
            "data/building.jpg",
            "data/butterfly.jpg",
            "data/chicky_512.png",
            "data/fruits.jpg",
            "data/graf1.png",
            "data/home.jpg",
            "data/leuvenA.jpg",
            "data/left01.jpg",
            "data/messi5.jpg",
            "data/orange.jpg",
            "data/rubberwhale1.png",
            "data/squirrel_cls.jpg",
            "data/stuff.jpg",
            "hfs/data/000.jpg",
            "hfs/data/001.jpg",
            "hfs/data/002.jpg",
            "reg/home.png",
            "text/scenetext01.jpg",
            "text/scenetext02.jpg",
            "text/scenetext03.jpg",
            "text/scenetext04.jpg",
            "text/scenetext05.jpg",
            "text/scenetext06.jpg",
        ),
    ),
}


@dataclass(frozen=True)
class Photo:
    name: str  # unique across sources: package/file
    path: Path
    package: str


@dataclass(frozen=True)
class PhotoSets:
    """Preprocessed NCHW float32 images and, per image, the photo it was cut from."""

    calibration: np.ndarray
    heldout: np.ndarray
    calibration_from: tuple[str, ...]
    heldout_from: tuple[str, ...]
    resolution: int

    def photo_ids(self) -> np.ndarray:
        """Per held-out image, the index of the photo it was cut from (for a clustered interval)."""
        index = {name: k for k, name in enumerate(dict.fromkeys(self.heldout_from))}
        return np.array([index[name] for name in self.heldout_from])

    def manifest(self) -> dict[str, object]:
        def side(names: tuple[str, ...]) -> dict[str, object]:
            photos = sorted(set(names))
            return {"images": len(names), "photos": len(photos), "sources": photos, "per_image": list(names)}

        return {
            "resolution": self.resolution,
            "preprocessing": f"(pixel - {MEAN:g}) / {STD:g}, NCHW, RGB",
            "split": f"by source photo: sha1(name)[0] < {HELDOUT_SHARE} * 256 -> held-out",
            "calibration": side(self.calibration_from),
            "heldout": side(self.heldout_from),
            "overlap": sorted(set(self.calibration_from) & set(self.heldout_from)),
        }


def _package_dir(module: str) -> Path | None:
    spec = importlib.util.find_spec(module)  # finds the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _largest(folder: Path) -> Path | None:
    files = [p for p in (folder / "contents" / "images").glob("*") if p.suffix.lower() in (".jpg", ".png")]
    if not files:
        return None

    def pixels(p: Path) -> int:
        w, _, h = p.stem.partition("x")
        return int(w) * int(h) if w.isdigit() and h.isdigit() else 0

    return max(files, key=pixels)


def find_photos() -> list[Photo]:
    """Every listed photograph that is installed here."""
    found: list[Photo] = []
    for module, (sub, names) in _PIP.items():
        base = _package_dir(module)
        for name in names:
            if base is not None and (base / sub / name).is_file():
                found.append(Photo(f"{module}/{name}", base / sub / name, f"pip:{module}"))
    for package, (folder, names) in _DEBIAN.items():
        for name in names:
            path = _largest(Path(folder) / name) if package.startswith("plasma") else Path(folder) / name
            if path is not None and path.is_file():
                found.append(Photo(f"{package}/{name}", path, f"debian:{package}"))
    return found


def is_heldout(photo: Photo) -> bool:
    return hashlib.sha1(photo.name.encode()).digest()[0] < HELDOUT_SHARE * 256


def crops(photo: Photo, count: int, resolution: int) -> list[np.ndarray]:
    """`count` square crops of `photo` (HWC uint8 RGB, resolution x resolution): the centre crop
    first (shorter side / 0.875 -> resolution, as at ImageNet evaluation), then seeded ones."""
    from PIL import Image

    with Image.open(photo.path) as raw:
        raw.draft("RGB", (4 * resolution, 4 * resolution))  # JPEG: decode at a reduced size
        im = raw.convert("RGB")
    w, h = im.size
    short = min(w, h)
    rng = np.random.default_rng(int.from_bytes(hashlib.sha1(photo.name.encode()).digest()[:4], "little"))
    out = []
    for k in range(count):
        side = short * 0.875 if k == 0 else short * rng.uniform(0.4, 0.8)
        if k == 0:
            left, top = (w - side) / 2, (h - side) / 2
        else:
            left, top = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (round(left), round(top), round(left + side), round(top + side))
        out.append(np.asarray(im.resize((resolution, resolution), Image.BICUBIC, box=box, reducing_gap=3.0)))
    return out


def preprocess(images: list[np.ndarray]) -> np.ndarray:
    x = np.stack(images).astype(np.float32)
    return np.ascontiguousarray(((x - MEAN) / STD).transpose(0, 3, 1, 2))


def build(resolution: int = 240, calibration_images: int = 100, heldout_crops: int = 5) -> PhotoSets:
    """Calibration (about `calibration_images`, crops spread evenly over its photos) and held-out
    (`heldout_crops` per photo) sets."""
    photos = find_photos()
    held = [p for p in photos if is_heldout(p)]
    calib = [p for p in photos if not is_heldout(p)]
    if not held or not calib:
        raise SystemExit(
            f"only {len(photos)} photographs found; install the sources listed in {__file__}'s docstring"
        )
    per_photo = max(1, -(-calibration_images // len(calib)))
    c_imgs, c_from, c_rank, h_imgs, h_from = [], [], [], [], []
    for p in calib:
        for k, im in enumerate(crops(p, per_photo, resolution)):
            c_imgs.append(im)
            c_from.append(p.name)
            c_rank.append(k)
    for p in held:
        for im in crops(p, heldout_crops, resolution):
            h_imgs.append(im)
            h_from.append(p.name)
    # keep the calibration set at the asked size, dropping the last crops of each photo first
    order = sorted(range(len(c_imgs)), key=lambda i: (c_rank[i], i))
    keep = sorted(order[:calibration_images])
    return PhotoSets(
        preprocess([c_imgs[i] for i in keep]),
        preprocess(h_imgs),
        tuple(c_from[i] for i in keep),
        tuple(h_from),
        resolution,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--resolution", type=int, default=240)
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--heldout-crops", type=int, default=5)
    parser.add_argument("--out", type=Path, help="write calibration.npz / heldout.npz (key 'input') here")
    args = parser.parse_args()
    sets = build(args.resolution, args.calibration_images, args.heldout_crops)
    manifest = sets.manifest()
    print(json.dumps(manifest, indent=2))
    if sets.calibration_from and set(sets.calibration_from) & set(sets.heldout_from):
        sys.exit("a photo is on both sides")
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        np.savez(args.out / "calibration.npz", input=sets.calibration)
        np.savez(args.out / "heldout.npz", input=sets.heldout)
        (args.out / "photos.json").write_text(json.dumps(manifest, indent=2))


if __name__ == "__main__":
    main()
