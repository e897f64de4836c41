"""LoadHeldout: the held-out data `qconvert validate` measures on, a warning where it is (or shares samples
with) the calibration data, and the --metric function."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from qconvert.calibrate import Dataset, ModelInput, load_dataset
from qconvert.errors import CalibrationError, ConfigError
from qconvert.settings import DataOptions, ValidateConfig
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext


def _sample_keys(data: Dataset) -> list[bytes]:
    names = sorted(data.feeds)
    return [
        hashlib.sha256(b"".join(data.feeds[n][i].tobytes() for n in names)).digest() for i in range(len(data))
    ]


def calibration_notes(
    calib_path: Path | None,
    explicit: bool,
    data_path: Path,
    heldout: Dataset,
    inputs: list[ModelInput],
    options: DataOptions | None = None,
) -> list[str]:
    """Warn when the validation data is, or shares samples with, the calibration data."""
    if calib_path is None:
        return []
    if Path(calib_path).resolve() == Path(data_path).resolve():
        return [
            f"the validation data is the calibration data ({data_path}): the candidate was tuned on these "
            "samples, so figures will look better than they are. Give held-out samples with --data."
        ]
    try:
        calibration = load_dataset(calib_path, inputs, flag="--calibration-data", options=options)
    except CalibrationError:
        if explicit:
            raise
        return []  # the manifest's calibration file is not readable here: nothing to compare
    shared = set(_sample_keys(calibration))
    overlap = sum(k in shared for k in _sample_keys(heldout))
    if not overlap:
        return []
    return [
        f"{overlap} of the {len(heldout)} validation samples are also in the calibration data ({calib_path}): "
        "figures on them will look better than they are. Give held-out samples with --data."
    ]


def load_metric(spec: str) -> Callable[..., Any]:
    """`--metric file.py:fn` or `module:fn`, imported the way a SOURCE factory is."""
    from qconvert.sources import import_callable

    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(
            f"--metric {spec}: is not file.py:fn or package.module:fn. Example: --metric metrics.py:f1"
        )
    return import_callable(spec, label="--metric", error=ConfigError)[1]


def artifact_tokenizer(config: ValidateConfig, out_dir: Path | None) -> DataOptions:
    """The data options, with an OUT_DIR's own tokenizer (copied there from a Hugging Face source)
    reading text --data unless --tokenizer names another."""
    options = config.data_options
    if options.tokenizer is None and out_dir is not None and (out_dir / "tokenizer_config.json").is_file():
        return replace(options, tokenizer=str(out_dir))
    return options


class LoadHeldout(Stage[ValidateContext]):
    name = "load"
    needs = ("model_path", "out_dir", "inputs", "data_path", "calibration_path")
    gives = ("heldout", "metric_fn")

    def message(self, ctx: ValidateContext) -> str:
        return "reading the candidate and the data"

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.trust import check_data_vocab

        config = ctx.config
        options = artifact_tokenizer(config, ctx.out_dir)
        ctx.heldout = load_dataset(ctx.data_path, ctx.inputs, flag="--data", options=options)
        check_data_vocab(ctx.model_path, ("--data", ctx.heldout))  # before anything runs on it
        ctx.notes.extend(
            calibration_notes(
                ctx.calibration_path,
                bool(config.calibration_data),
                ctx.data_path,
                ctx.heldout,
                ctx.inputs,
                config.data_options,
            )
        )
        ctx.metric_fn = load_metric(config.metric) if config.metric else None
