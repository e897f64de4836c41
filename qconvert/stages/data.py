"""LoadData: calibration and held-out data; held-out data never overlaps the calibration samples, and
is large enough to pass under the tolerance, or the run says up front that it is not."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from qconvert.calibrate import Dataset, ModelInput, load_dataset, random_dataset
from qconvert.errors import CalibrationError
from qconvert.settings import (
    HOLDOUT_FRACTION,
    MIN_CALIBRATION_SAMPLES,
    RANDOM_DATA,
    RANDOM_HELDOUT_SAMPLES,
    RANDOM_HELDOUT_SEED,
    DataOptions,
    RunConfig,
)
from qconvert.sources import LoadedModel
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.tolerance import Bound, Tolerance, confidence_text
from qconvert.validation import samples_to_pass

log = logging.getLogger(__name__)


class LoadData(Stage[ExportContext]):
    name = "data"
    needs = ("loaded", "inputs", "mode", "tolerance")
    gives = ("calibration", "heldout", "user_files", "data_flags")

    def message(self, ctx: ExportContext) -> str:
        return "checking calibration and validation data"

    def run(self, ctx: ExportContext) -> None:
        config, loaded = ctx.config, ctx.loaded
        ctx.calibration, ctx.heldout, notes = load_data(config, loaded, ctx.inputs, ctx.mode, ctx.tolerance)
        ctx.notes[:0] = [*loaded.notes, *notes]
        ctx.data_flags = _random_data(config)
        ctx.user_files = [*loaded.files, *(Path(p) for p in (config.calibration, config.data) if p)]


def load_data(
    config: RunConfig,
    loaded: LoadedModel,
    inputs: list[ModelInput],
    mode: str,
    tolerance: Tolerance,
    warn: bool = True,
) -> tuple[Dataset | None, Dataset, list[str]]:
    """(calibration, held-out, notes). Held-out data never overlaps the calibration samples. Without
    --data, enough calibration samples are set aside to pass under `tolerance` at all (see
    `holdout_size`); where there are not enough, or --data is too small, a note (and a warning, at
    once, unless not `warn`) says the verdict can be INCONCLUSIVE at best."""
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
        notes.extend(_overlap_notes(calib_path, data_path))
        short = f"pass --data with more held-out samples ({len(heldout)} in {data_path})"
    elif calibration is not None and config.calibration == RANDOM_DATA:
        need = _needed(tolerance, config, loaded, labels=False)
        count = max(RANDOM_HELDOUT_SAMPLES, need[0] if need else 0)
        heldout = random_dataset(
            inputs,
            count,
            RANDOM_HELDOUT_SEED,
            f"random held-out inputs ({count} seeded samples, seed {RANDOM_HELDOUT_SEED})",
        )
        short = ""  # as many as passing needs
    elif calibration is not None:
        calibration, heldout, short = _set_aside(calibration, tolerance, config, loaded, notes)
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
    if short and (too_few := _too_few(len(heldout), tolerance, config, loaded, heldout.labels is not None)):
        if warn:
            log.warning("%s; %s", too_few, short)
        notes.append(f"{too_few}; {short}")
    # every calibration set is returned: ChooseDefaults drops it where nothing of the run reads it
    return calibration, heldout, notes


def _overlap_notes(calib_path: str | Path | None, data_path: str | Path) -> list[str]:
    """Where --data is, or lies inside, the calibration data: figures will look better than they are."""
    if calib_path and Path(calib_path).resolve() == Path(data_path).resolve():
        return ["the validation data is the calibration data; figures will look better than they are"]
    if (
        calib_path
        and Path(calib_path).is_dir()
        and Path(calib_path).resolve() in Path(data_path).resolve().parents
    ):
        return [
            f"--data {data_path} lies inside the --calibration folder {calib_path}, so its samples were "
            "calibrated on too; figures will look better than they are. Move it out of the folder."
        ]
    return []


def _set_aside(
    calibration: Dataset, tolerance: Tolerance, config: RunConfig, loaded: LoadedModel, notes: list[str]
) -> tuple[Dataset, Dataset, str]:
    """No --data: (calibration left, held-out, what to do if too few), a note saying what was set aside."""
    total = len(calibration)
    need = _needed(tolerance, config, loaded, labels=calibration.labels is not None)
    held = holdout_size(total, need[0] if need else None)
    calibration, heldout = calibration.split(held)
    why = (
        f" (more than {HOLDOUT_FRACTION:.0%}: passing {need[1].describe()} at {confidence_text(config.confidence)} "
        f"confidence needs at least {need[0]} held-out samples)"
        if need and held == need[0] and held > _share(total)
        else ""
    )
    notes.append(
        f"no --data given: {held} of the {total} calibration samples were set aside for validation and "
        f"not used for calibration{why}"
    )
    short = (
        f"the {total} calibration samples cannot spare that many ({MIN_CALIBRATION_SAMPLES} or more stay "
        "for calibration): pass --data with enough held-out samples"
    )
    return calibration, heldout, short


def _share(total: int) -> int:
    return max(1, round(total * HOLDOUT_FRACTION))


def holdout_size(total: int, needed: int | None) -> int:
    """How many of `total` calibration samples to set aside for validation when no --data is given:
    HOLDOUT_FRACTION of them, or more where the tolerance needs `needed` held-out samples to be
    passed at all, as long as MIN_CALIBRATION_SAMPLES are left to calibrate on. Otherwise the share
    stays HOLDOUT_FRACTION (calibration is not starved for a verdict that would still be short)."""
    share = _share(total)
    if needed is None or needed <= share or total - needed < MIN_CALIBRATION_SAMPLES:
        return share
    return needed


def _needed(
    tolerance: Tolerance, config: RunConfig, loaded: LoadedModel, labels: bool, class_scores: bool = True
) -> tuple[int, Bound] | None:
    """The held-out samples a perfect model of this kind needs to pass `tolerance` (validation.samples_to_pass);
    whether it has class-score outputs is not known before it runs, so by default it may."""
    kinds = tuple(loaded.token_outputs.values())
    return samples_to_pass(
        tolerance, config.confidence, labels=labels, class_scores=class_scores, token_kinds=kinds
    )


def _too_few(
    have: int, tolerance: Tolerance, config: RunConfig, loaded: LoadedModel, labels: bool
) -> str | None:
    """Where `have` held-out samples cannot pass: for certain (a bound every model has), or where the
    model has class-score outputs; None where they can."""
    level = confidence_text(config.confidence)
    sure = _needed(tolerance, config, loaded, labels, class_scores=False)
    if sure is not None and have < sure[0]:
        return (
            f"{have} held-out samples are too few to pass at all: {sure[1].describe()} needs at least "
            f"{sure[0]} at {level} confidence even if every sample agrees, so the verdict can be INCONCLUSIVE at best"
        )
    maybe = _needed(tolerance, config, loaded, labels)
    if maybe is not None and have < maybe[0]:
        return (
            f"{have} held-out samples may be too few to pass: if the model outputs class scores, "
            f"{maybe[1].describe()} needs at least {maybe[0]} at {level} confidence even if every sample "
            "agrees, so the verdict can be INCONCLUSIVE at best"
        )
    return None


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
