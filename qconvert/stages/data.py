"""LoadData: calibration and held-out data; held-out data never overlaps the calibration samples."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from qconvert.calibrate import Dataset, ModelInput, load_dataset, random_dataset
from qconvert.config import (
    HOLDOUT_FRACTION,
    RANDOM_DATA,
    RANDOM_HELDOUT_SAMPLES,
    RANDOM_HELDOUT_SEED,
    DataOptions,
    RunConfig,
)
from qconvert.errors import CalibrationError
from qconvert.sources import LoadedModel
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext


class LoadData(Stage[ExportContext]):
    name = "data"
    needs = ("loaded", "inputs", "mode")
    gives = ("calibration", "heldout", "user_files", "data_flags")

    def message(self, ctx: ExportContext) -> str:
        return "checking calibration and validation data"

    def run(self, ctx: ExportContext) -> None:
        config, loaded = ctx.config, ctx.loaded
        ctx.calibration, ctx.heldout, notes = load_data(config, loaded, ctx.inputs, ctx.mode)
        ctx.notes[:0] = [*loaded.notes, *notes]
        ctx.data_flags = _random_data(config)
        ctx.user_files = [*loaded.files, *(Path(p) for p in (config.calibration, config.data) if p)]


def load_data(
    config: RunConfig, loaded: LoadedModel, inputs: list[ModelInput], mode: str
) -> tuple[Dataset | None, Dataset, list[str]]:
    """(calibration, held-out, notes). Held-out data never overlaps the calibration samples."""
    notes: list[str] = []
    calib_path = config.calibration or loaded.default_calibration
    data_path = config.data or (loaded.default_data if not config.calibration else None)
    calibration = (
        load_dataset(
            calib_path,
            inputs,
            flag="--calibration",
            samples=config.samples,
            options=_data_options(config, loaded),
        )
        if calib_path
        else None
    )
    if data_path is not None:
        heldout = load_dataset(data_path, inputs, flag="--data", options=_data_options(config, loaded))
        if calib_path and Path(calib_path).resolve() == Path(data_path).resolve():
            notes.append(
                "the validation data is the calibration data; figures will look better than they are"
            )
        elif (
            calib_path
            and Path(calib_path).is_dir()
            and Path(calib_path).resolve() in Path(data_path).resolve().parents
        ):
            notes.append(
                f"--data {data_path} lies inside the --calibration folder {calib_path}, so its samples were "
                "calibrated on too; figures will look better than they are. Move it out of the folder."
            )
    elif calibration is not None and config.calibration == RANDOM_DATA:
        heldout = random_dataset(
            inputs,
            RANDOM_HELDOUT_SAMPLES,
            RANDOM_HELDOUT_SEED,
            f"random held-out inputs ({RANDOM_HELDOUT_SAMPLES} seeded samples, seed {RANDOM_HELDOUT_SEED})",
        )
    elif calibration is not None:
        calibration, heldout = calibration.split(HOLDOUT_FRACTION)
        notes.append(
            f"no --data given: {len(heldout)} of the calibration samples were set aside for validation and "
            "not used for calibration"
        )
    else:
        raise CalibrationError(
            "validation needs inputs: pass --data DATA (held-out samples, .npz keyed by input name) or "
            "--calibration DATA (a share is then held out for validation)."
        )
    if mode == "static" and calibration is None:
        raise CalibrationError(
            "static int8 needs calibration data: pass --calibration DATA (.npz keyed by input name)."
        )
    gptq = config.bits == 4 and config.weight_algorithm == "gptq"  # GPTQ weighs rounding by layer inputs
    if gptq and calibration is None:
        raise CalibrationError(
            "--algorithm gptq needs calibration data: pass --calibration DATA (.npz keyed by input name), or "
            "use --algorithm rtn or hqq, which need none."
        )
    random_note = _random_data_note(_random_data(config))
    if random_note:
        notes.insert(0, random_note)
    # every calibration set is returned: ChooseDefaults drops it where nothing of the run reads it
    return calibration, heldout, notes


def _data_options(config: RunConfig, loaded: LoadedModel) -> DataOptions:
    """The data options, with the source's own tokenizer (a Hugging Face folder's) reading text DATA
    unless --tokenizer names another."""
    if config.data_options.tokenizer is None and loaded.tokenizer is not None:
        return replace(config.data_options, tokenizer=loaded.tokenizer)
    return config.data_options


def _random_data(config: RunConfig) -> dict[str, bool]:
    """report.json's `data` entry: which of the data were seeded random inputs (`--calibration random`)."""
    calibration_random = config.calibration == RANDOM_DATA
    return {
        "calibration_random": calibration_random,
        "validation_random": calibration_random and not config.data,
    }


def _random_data_note(flags: dict[str, bool]) -> str | None:
    if not flags["calibration_random"]:
        return None
    validated = (
        "validation also ran on random inputs (another seed), so"
        if flags["validation_random"]
        else "validation ran on --data, but"
    )
    return (
        "--calibration random: the model was calibrated on seeded random inputs, not real data, and "
        f"{validated} the accuracy figures (agreement, cosine, accuracy) are not meaningful for real inputs. "
        "Calibrate and validate on real samples before shipping."
    )
