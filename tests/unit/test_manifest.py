"""qconvert.json records everything needed to re-run the export: the settings `Manifest.run_config()`
reads back from it print exactly its `command` (settings.to_argv), for real exports of the built-in
model and of a model file; and what it records is read by attributes, a bad entry or setting being a
SourceError that names qconvert.json and the key."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_MLP, save_npz, write_model
from PIL import Image
from test_settings_argv import CASES

from qconvert.errors import SourceError
from qconvert.pipeline import RunResult, export
from qconvert.results import Manifest
from qconvert.settings import DataOptions, ExportSettings, RunConfig, from_flat
from qconvert.types import InputSpec

DIGITS = Path(__file__).resolve().parents[2] / "calibration" / "digits_calib.npz"
RECORDS = Path(__file__).resolve().parents[1] / "golden" / "records"


def _digit_pngs(folder: Path, count: int) -> Path:
    """The first `count` built-in calibration digits as 8x8 grayscale PNGs (their normalization undone)."""
    folder.mkdir()
    for i, x in enumerate(np.load(DIGITS)["input"][:count]):
        pixels = np.clip(np.rint((x[0] * 0.3759 + 0.3054) * 255), 0, 255).astype(np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"{i:03d}.png")
    return folder


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[RunConfig, RunResult]]:
    """Four real exports whose settings differ in every group: the defaults (the target picks the
    mode), 4-bit weight-only with its block size, an image folder with DataOptions, --exclude and
    target options, and a model file with --input and its own data."""
    root = tmp_path_factory.mktemp("manifests")
    mlp = write_model(root / "mlp", TINY_MLP, "mlp.py")
    data = save_npz(root / "mlp.npz", seed=3, x=(80, 12))
    configs = {
        # format pinned: the cpu format race times QDQ against QOperator, which under load can pick
        # either on two runs, and the re-run below must rebuild the same model
        "defaults": RunConfig(target_options=(("format", "qdq"),), latency_repeats=2),
        "int4": RunConfig(bits=4, mode="weight-only", block_size=16, latency_repeats=2),
        "images": RunConfig(
            calibration=str(_digit_pngs(root / "digits-png", 90)),
            data_options=DataOptions(mean=(0.3054,), std=(0.3759,), image_size=(8, 8)),
            exclude=("op:Gemm",),
            target_options=(("format", "qdq"),),
            recover=(),
            calibration_method="percentile",
            tolerance="cosine>=0.9",
            confidence=0.9,
            latency_repeats=2,
        ),
        "model file": RunConfig(
            source=f"{mlp}:build",
            inputs=(InputSpec("x", (1, 12)),),
            calibration=str(data),
            samples=60,
            mode="dynamic",
            tolerance="cosine>=0.9",
            latency_repeats=2,
        ),
    }
    return {name: (config, export(config.evolve(out_dir=root / name))) for name, config in configs.items()}


@pytest.mark.parametrize("name", ["defaults", "int4", "images", "model file"])
def test_the_settings_read_back_from_qconvert_json_print_its_command(
    exports: dict[str, tuple[RunConfig, RunResult]], name: str
) -> None:
    config, result = exports[name]
    manifest = Manifest.load(result.out_dir)
    # the typed record read back is the one written (the settings, an open JSON object, are below)
    assert replace(manifest, settings={}) == replace(result.manifest_record, settings={})
    rerun = manifest.run_config()
    assert rerun == config.evolve(out_dir=result.out_dir)  # the very settings of the run
    assert shlex.join(rerun.to_argv(rerun.output.out_dir)) == manifest.command


def test_what_the_manifest_records_reads_as_attributes(
    exports: dict[str, tuple[RunConfig, RunResult]],
) -> None:
    images = Manifest.load(exports["images"][1].out_dir)
    assert images.settings["mode"] is None and images.quantization.mode == "static"  # as given, as decided
    assert images.run_config().data_options.mean == (0.3054,)
    assert images.quantization.nodes_to_exclude and images.quantization.calibration_method == "percentile"
    calibration, heldout = images.data.calibration, images.data.validation
    assert calibration is not None and calibration.samples + heldout.samples == 90  # split, never overlapping
    assert images.providers[0].name == "CPUExecutionProvider" == images.validated_on.provider
    model_file = Manifest.load(exports["model file"][1].out_dir)
    assert model_file.run_config().inputs == (InputSpec("x", (1, 12)),)
    assert model_file.source.inputs[0].dims == (None, 12)
    assert model_file.source.kind == "factory" and model_file.source.files[0].path.endswith("mlp.py")
    assert Manifest.load(exports["int4"][1].out_dir).data.calibration is None


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_setting_survives_the_manifest_json(case: str) -> None:
    """test_settings_argv's runs, every flag among them: their settings as the manifest writes them
    (flat, through JSON) come back equal, and print the same command."""
    config, command = CASES[case]
    written = json.loads(json.dumps({**config.flat(), "out_dir": "out/dir"}, default=str))
    back = from_flat(ExportSettings, written, "qconvert.json: settings")
    assert back == config.evolve(out_dir=Path("out/dir"))
    assert shlex.join(back.to_argv(Path("out/dir"))) == command


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"bits": 5}, "qconvert.json: settings: --bits 5 is not supported"),
        ({"mode": "fastest"}, "qconvert.json: settings: --mode 'fastest' is not a mode"),
        ({"data_options": {"layout": "hwc"}}, "qconvert.json: settings: --layout 'hwc' is not a layout"),
    ],
)
def test_a_bad_setting_in_qconvert_json_is_a_source_error_naming_it(
    exports: dict[str, tuple[RunConfig, RunResult]], change: dict[str, object], message: str
) -> None:
    doc = json.loads((exports["defaults"][1].out_dir / "qconvert.json").read_text())
    doc["settings"].update(change)
    with pytest.raises(SourceError, match=re.escape(message)):
        Manifest.from_json(doc).run_config()


def test_a_setting_an_older_qconvert_did_not_write_reads_as_its_default(
    exports: dict[str, tuple[RunConfig, RunResult]],
) -> None:
    doc = json.loads((exports["defaults"][1].out_dir / "qconvert.json").read_text())
    del doc["settings"]["placement"], doc["settings"]["recover"]
    doc["settings"]["from_a_newer_qconvert"] = 1
    rerun = Manifest.from_json(doc).run_config()
    assert rerun.placement is None and rerun.recover is None


def test_a_version_1_manifest_without_later_entries_reads_and_a_current_one_must_have_them() -> None:
    doc = json.loads((RECORDS / "qconvert-cpu-int8-failed.json").read_text())
    del doc["quantization"]["layer_formats"], doc["validation"]["verdict"], doc["validation"]["confidence"]
    old = Manifest.from_json({**doc, "schema_version": 1})
    assert old.quantization.layer_formats == () and old.validation.verdict == "failed"
    with pytest.raises(SourceError, match=r"qconvert.json: quantization: no 'layer_formats' entry"):
        Manifest.from_json(doc)


def test_re_running_the_settings_read_back_rebuilds_the_same_model(
    exports: dict[str, tuple[RunConfig, RunResult]], tmp_path: Path
) -> None:
    """The defaults run, where the target and the model family chose the mode, the range method and
    the recovery steps: the settings read back from its qconvert.json decide the same again and give
    model.onnx byte for byte."""
    first = Manifest.load(exports["defaults"][1].out_dir)
    again = export(first.run_config().evolve(out_dir=tmp_path / "again")).manifest_record
    assert again.quantization == first.quantization
    assert again.files["model.onnx"] == first.files["model.onnx"]
