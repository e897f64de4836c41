"""DATA readers beyond arrays: image folders, `file.py:callable` sources and `--calibration random`,
read through `load_dataset` and end to end through `qconvert export` / `qconvert validate`."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import cli
from PIL import Image
from typer.testing import CliRunner

from qconvert.calibrate import Dataset, ModelInput, load_dataset
from qconvert.cli import app
from qconvert.errors import CalibrationError
from qconvert.settings import DataOptions, from_flags

RGB = ModelInput("image", (None, 3, 8, 8), "float32")
RGB_NHWC = ModelInput("image", (None, 8, 8, 3), "float32")
GRAY = ModelInput("image", (None, 1, 8, 8), "float32")
ANY_SIZE = ModelInput("image", (None, 3, None, None), "float32")

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})


def _pixels(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


def _write_images(folder: Path, pixels: np.ndarray) -> None:
    """One PNG per array in `pixels` ([H, W, 3] RGB or [H, W] grayscale), named 00.png, 01.png ..."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i:02d}.png")


def _load(path: Path | str, inp: ModelInput = RGB, flag: str = "--calibration", **kwargs: object) -> Dataset:
    return load_dataset(path, [inp], flag=flag, **kwargs)  # type: ignore[arg-type]


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args)


# --- image folders: values, layouts, channels ---------------------------------------------------


def test_rgb_images_are_scaled_normalized_and_laid_out_nchw(tmp_path: Path) -> None:
    pixels = _pixels(3, (8, 8, 3))
    _write_images(tmp_path / "imgs", pixels)
    mean, std = (0.5, 0.25, 0.125), (0.5, 0.25, 2.0)

    data = _load(tmp_path / "imgs", options=DataOptions(mean=mean, std=std))

    expected = (pixels.astype(np.float32) / 255 - np.array(mean, np.float32)) / np.array(std, np.float32)
    assert data.feeds["image"].shape == (3, 3, 8, 8)
    assert data.feeds["image"].dtype == np.float32
    np.testing.assert_allclose(data.feeds["image"], expected.transpose(0, 3, 1, 2), rtol=0, atol=1e-6)
    assert data.labels is None
    # one mean / std value applies to every channel
    same = _load(tmp_path / "imgs", options=DataOptions(mean=(0.5,), std=(0.25,)))
    np.testing.assert_allclose(
        same.feeds["image"], ((pixels / 255 - 0.5) / 0.25).transpose(0, 3, 1, 2), atol=1e-6
    )


def test_nhwc_layout_keeps_channels_last(tmp_path: Path) -> None:
    pixels = _pixels(2, (8, 8, 3), seed=1)
    _write_images(tmp_path / "imgs", pixels)

    data = _load(tmp_path / "imgs", RGB_NHWC, options=DataOptions(layout="nhwc"))

    np.testing.assert_allclose(data.feeds["image"], pixels / np.float32(255), atol=1e-6)


def test_grayscale_model_and_grayscale_images(tmp_path: Path) -> None:
    gray = _pixels(2, (8, 8), seed=2)
    _write_images(tmp_path / "gray", gray)
    data = _load(tmp_path / "gray", GRAY, options=DataOptions(mean=(0.5,), std=(0.5,)))
    np.testing.assert_allclose(data.feeds["image"][:, 0], (gray / 255 - 0.5) / 0.5, atol=1e-6)

    # an RGB file for a 1-channel input is converted to luminance (L = 0.299 R + 0.587 G + 0.114 B)
    rgb = _pixels(1, (8, 8, 3), seed=3)
    _write_images(tmp_path / "rgb", rgb)
    luminance = _load(tmp_path / "rgb", GRAY).feeds["image"][0, 0] * 255
    weighted = rgb[0].astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    assert np.abs(luminance - weighted).max() <= 1.0

    # and a grayscale file for an RGB input repeats its value in all three channels
    as_rgb = _load(tmp_path / "gray", RGB).feeds["image"]
    for c in range(3):
        np.testing.assert_allclose(as_rgb[:, c], gray / 255, atol=1e-6)


def test_class_subfolders_give_labels_in_sorted_order(tmp_path: Path) -> None:
    root = tmp_path / "train"
    _write_images(root / "b_dog", _pixels(2, (8, 8, 3), seed=4))
    _write_images(root / "a_cat", _pixels(1, (8, 8, 3), seed=5))
    _write_images(root / "a_cat" / "more", _pixels(1, (8, 8, 3), seed=6))  # recursive below a class
    (root / "c_empty").mkdir()  # keeps its class id 2

    data = _load(root)

    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    first = np.asarray(Image.open(root / "a_cat" / "00.png"), dtype=np.float32) / 255
    np.testing.assert_allclose(data.feeds["image"][0], first.transpose(2, 0, 1), atol=1e-6)
    assert len(_load(root, samples=3)) == 3


def test_images_are_resized_to_the_model_input(tmp_path: Path) -> None:
    left, right = np.zeros((16, 10, 3), np.uint8), np.full((16, 10, 3), 200, np.uint8)
    _write_images(tmp_path / "imgs", np.concatenate([left, right], axis=1)[None])  # 16 x 20

    data = _load(tmp_path / "imgs")

    x = data.feeds["image"][0]
    assert x.shape == (3, 8, 8)
    np.testing.assert_allclose(x[:, :, :3], 0, atol=1e-6)  # the dark half stays dark
    np.testing.assert_allclose(x[:, :, 5:], 200 / 255, atol=1e-6)  # the bright half stays bright


def test_image_size_flag_for_a_model_of_any_size(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", _pixels(2, (9, 9, 3)))
    data = _load(tmp_path / "imgs", ANY_SIZE, options=from_flags(DataOptions, {"image_size": "6x10"}))
    assert data.feeds["image"].shape == (2, 3, 6, 10)

    with pytest.raises(CalibrationError, match=r"does not fix its height and width .* Pass --image-size HxW"):
        _load(tmp_path / "imgs", ANY_SIZE)
    with pytest.raises(
        CalibrationError, match=r"--image-size 6x6 does not fit input 'image', which takes 8x8"
    ):
        _load(tmp_path / "imgs", RGB, options=from_flags(DataOptions, {"image_size": "6"}))


def test_samples_decodes_only_the_first_images(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", _pixels(2, (8, 8, 3)))
    (tmp_path / "imgs" / "99.png").write_bytes(b"not a png at all")  # last in sorted order

    assert len(_load(tmp_path / "imgs", samples=2)) == 2
    with pytest.raises(CalibrationError, match=r"cannot read the image .*99\.png .*Replace or remove"):
        _load(tmp_path / "imgs")


# --- image folders: what is refused -------------------------------------------------------------


def test_wrong_layout_says_which_layout_the_model_wants(tmp_path: Path) -> None:
    _write_images(tmp_path / "imgs", _pixels(1, (8, 8, 3)))
    with pytest.raises(CalibrationError, match=r"--layout nchw: .*looks NHWC .*Pass --layout nhwc"):
        _load(tmp_path / "imgs", RGB_NHWC)
    with pytest.raises(CalibrationError, match=r"--layout nhwc: .*looks NCHW .*Pass --layout nchw"):
        _load(tmp_path / "imgs", RGB, options=DataOptions(layout="nhwc"))


@pytest.mark.parametrize(
    ("inp", "options", "message"),
    [
        (RGB, DataOptions(mean=(0.1, 0.2)), r"--mean has 2 values but the images have 3 channel"),
        (GRAY, DataOptions(std=(1.0, 1.0, 1.0)), r"--std has 3 values but the images have 1 channel"),
        (ModelInput("ids", (None, 8), "float32"), DataOptions(), r"feeds a 4-D image input"),
        (ModelInput("image", (None, 3, 8, 8), "int64"), DataOptions(), r"is int64; image folders produce"),
        (ModelInput("image", (None, 5, 8, 8), "float32"), DataOptions(), r"5 channels .* 1 \(grayscale\)"),
    ],
    ids=["mean", "std", "rank", "dtype", "channels"],
)
def test_image_folder_refusals(tmp_path: Path, inp: ModelInput, options: DataOptions, message: str) -> None:
    _write_images(tmp_path / "imgs", _pixels(1, (8, 8, 3)))
    with pytest.raises(CalibrationError, match=message):
        _load(tmp_path / "imgs", inp, options=options)


def test_folder_without_data_or_with_both_kinds_of_images(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hello")
    with pytest.raises(CalibrationError, match=r"no \.npy or \.npz files and no images"):
        _load(tmp_path / "empty")

    _write_images(tmp_path / "mixed", _pixels(1, (8, 8, 3)))
    _write_images(tmp_path / "mixed" / "cls", _pixels(1, (8, 8, 3)))
    with pytest.raises(CalibrationError, match=r"1 image\(s\) directly and 1 in subfolders"):
        _load(tmp_path / "mixed")


# --- file.py:callable ---------------------------------------------------------------------------

SOURCES = '''
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
NOT_CALLABLE = 3


def batches():
    """5 batches of 2 samples, with labels; leaves a marker file per batch it produced."""
    rng = np.random.default_rng(0)
    try:
        for i in range(5):
            (HERE / f"produced-{i}").touch()
            yield {"image": rng.standard_normal((2, 3, 8, 8)), "labels": np.array([i, i])}
    finally:
        (HERE / "closed").touch()


def singles():
    """3 samples without the batch axis (a list), each with a scalar label, under another key."""
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((3, 8, 8)).astype(np.float32), "label": k} for k in range(3)]


def raises():
    raise RuntimeError("no dataset mounted")


def fails_midway():
    yield {"image": np.zeros((1, 3, 8, 8), np.float32)}
    raise OSError("disk went away")


def not_dicts():
    return [np.zeros((1, 3, 8, 8))]


def strings():
    return [{"image": "cat.png"}]


def one_dict():
    return {"image": np.zeros((1, 3, 8, 8))}


def wrong_rank():
    return [{"image": np.zeros((8, 8))}]
'''


@pytest.fixture
def sources_file(tmp_path: Path) -> Path:
    path = tmp_path / "src" / "feeds.py"
    path.parent.mkdir()
    path.write_text(textwrap.dedent(SOURCES).lstrip())
    return path


def test_callable_yielding_batches_with_labels(sources_file: Path) -> None:
    data = _load(f"{sources_file}:batches")
    assert len(data) == 10
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    expected = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(data.feeds["image"][:2], expected)
    assert data.feeds["image"].dtype == np.float32  # float64 from the callable, cast to the input's dtype


def test_callable_yielding_single_samples(sources_file: Path) -> None:
    data = _load(f"{sources_file}:singles")
    assert data.feeds["image"].shape == (3, 3, 8, 8)
    np.testing.assert_array_equal(data.labels, [0, 1, 2])


def test_samples_stops_the_generator_early(sources_file: Path) -> None:
    data = _load(f"{sources_file}:batches", samples=3)

    assert len(data) == 3
    np.testing.assert_array_equal(data.labels, [0, 0, 1])
    produced = sorted(p.name for p in sources_file.parent.glob("produced-*"))
    assert produced == ["produced-0", "produced-1"]  # batches 2..4 were never made
    assert (sources_file.parent / "closed").exists()  # and the generator was closed, not left hanging


def test_package_module_callable(sources_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(sources_file.parent))
    monkeypatch.delitem(sys.modules, "feeds", raising=False)
    assert len(_load("feeds:singles")) == 3


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("missing", r"has no callable 'missing'\. Callables there: .*batches"),
        ("NOT_CALLABLE", r"has no callable 'NOT_CALLABLE'"),
        ("raises", r"raises\(\) raised RuntimeError: no dataset mounted"),
        ("fails_midway", r"the iterable raised OSError: disk went away \(while producing item 2\)"),
        ("not_dicts", r"item 1 is a ndarray, not a dict of arrays keyed by model input name \(image\)"),
        ("strings", r"item 1: the value for 'image' is a str .*not a numeric array"),
        ("one_dict", r"one_dict\(\) returned a dict; it must return an iterable of feed dicts"),
        ("wrong_rank", r"item 1: 'image' has shape \[8, 8\]; the input takes samples of shape \[3, 8, 8\]"),
    ],
)
def test_callable_errors(sources_file: Path, name: str, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        _load(f"{sources_file}:{name}")


def test_callable_file_missing(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"--data .*nowhere\.py:make: no such file .*nowhere\.py"):
        _load(f"{tmp_path}/nowhere.py:make", flag="--data")


# --- random -------------------------------------------------------------------------------------


def test_random_calibration_is_seeded_and_float_only() -> None:
    a, b = _load("random", samples=5), _load("random", samples=5)
    assert a.feeds["image"].shape == (5, 3, 8, 8)
    np.testing.assert_array_equal(a.feeds["image"], b.feeds["image"])
    assert abs(float(a.feeds["image"].std()) - 1) < 0.2

    with pytest.raises(CalibrationError, match=r"is int64, and random values are only made for float"):
        _load("random", ModelInput("input_ids", (None, 6), "int64"))
    with pytest.raises(CalibrationError, match=r"--data random: random inputs are only for --calibration"):
        _load("random", flag="--data")


# --- through the CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--image-size", "0x5", "--image-size '0x5' is not HxW or N"),
        ("--mean", "0.5,abc", "--mean '0.5,abc' is not a comma-separated list of numbers"),
        ("--std", "0.5,0", "--std '0.5,0': every value must be greater than 0"),
        ("--layout", "nhw", "--layout 'nhw' is not a layout. Valid: nchw, nhwc"),
    ],
)
@pytest.mark.parametrize("command", ["export", "validate"])
def test_bad_image_flags_exit_2_naming_the_flag(
    command: str, flag: str, value: str, message: str, tmp_path: Path
) -> None:
    first = "model.py:build" if command == "export" else str(tmp_path / "model.onnx")
    code, text = qconvert(command, first, "--data", str(tmp_path), flag, value)
    assert code == 2, text
    assert "error (config)" in text and message in text, text


def test_export_on_an_image_folder_then_validate(
    cnn_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    for k, name in enumerate(["ant", "bee", "cat", "dog"]):  # 12x12 photos, resized to the model's 8x8
        _write_images(tmp_path / "photos" / name, _pixels(10, (12, 12, 3), seed=10 + k))
    flags = ["--mean", "0.485,0.456,0.406", "--std", "0.229,0.224,0.225"]

    code, text = qconvert(
        "export", f"{cnn_file}:build", "--calibration", "photos", *flags, "--target-option", "format=qdq",
        "-o", "out",
    )  # fmt: skip

    assert code in (0, 1), text  # exit 1 would be a tolerance verdict, not a data problem
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    manifest = json.loads((tmp_path / "out" / "qconvert.json").read_text())
    assert manifest["data"]["calibration"]["samples"] == 32  # 40 images, 8 held out for validation
    assert report["accuracy"]["samples"] == 8  # labels came from the class subfolders
    assert report["data"] == {"calibration_random": False, "validation_random": False}
    assert "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225" in manifest["command"]

    code, text = qconvert("validate", "out", "--data", "photos", *flags)
    assert code in (0, 1), text
    assert "(40 samples)" in text and "accuracy (output)" in text, text

    # the image flags reach the reader in both commands
    for command, data_flag in (("validate", "--data"), ("export", "--calibration")):
        first = ["out"] if command == "validate" else [f"{cnn_file}:build", "-o", "out2"]
        code, text = qconvert(command, *first, data_flag, "photos", "--layout", "nhwc")
        assert code == 2, text
        assert (
            f"{data_flag} photos: --layout nhwc: input 'image' has shape [?, 3, 8, 8], which looks NCHW"
            in text
        )


def test_random_calibration_end_to_end_says_so_in_bold(
    cnn_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rich.console import Console

    from qconvert.cli import export_cmd

    # a real console that writes ANSI styles to the captured stdout, as on a colour terminal
    monkeypatch.setattr(
        export_cmd, "out", Console(force_terminal=True, color_system="standard", width=200, highlight=False)
    )
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(
        app, ["export", f"{cnn_file}:build", "--calibration", "random", "--samples", "32", "-o", "out"]
    )

    assert result.exit_code in (0, 1), result.output
    warning = (
        "Accuracy figures are not meaningful: this model was calibrated and validated on random inputs "
        "(--calibration random), not real data."
    )
    assert "\x1b[1m" + warning in result.stdout, result.stdout  # bold, in the summary
    out = tmp_path / "out"
    report = json.loads((out / "report.json").read_text())
    assert report["data"] == {"calibration_random": True, "validation_random": True}
    assert report["notes"][0].startswith("--calibration random: the model was calibrated on seeded random")
    assert "validation also ran on random inputs (another seed)" in report["notes"][0]
    # RANDOM_HELDOUT_SAMPLES (100), raised to the 125 that top1_agreement>=0.97 takes to pass at 95%
    assert report["validation"]["samples"] == 125
    html = (out / "report.html").read_text()
    assert f'<p id="random-data"><strong>{warning}</strong></p>' in html
    manifest = json.loads((out / "qconvert.json").read_text())
    assert manifest["data"]["calibration"] == {
        "origin": "--calibration random (32 seeded samples)",
        "samples": 32,
    }
