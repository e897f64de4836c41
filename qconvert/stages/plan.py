"""PlanQuantization: what the settings and the target decide before any model is loaded."""

from __future__ import annotations

from dataclasses import replace

from qconvert import choices
from qconvert.artifacts import check_output_dir
from qconvert.errors import ConfigError
from qconvert.quantize import QUANTIZERS
from qconvert.stages.base import Stage
from qconvert.stages.context import ExportContext
from qconvert.targets import TARGETS
from qconvert.tolerance import Tolerance


class PlanQuantization(Stage[ExportContext]):
    """Target, mode, tolerance, target options and the quantization candidates (several where the
    format is raced); refuses --exclude/--include, --recover names and OUT_DIR early."""

    name = "plan"
    gives = ("target", "mode", "tolerance", "candidates", "qc")

    def run(self, ctx: ExportContext) -> None:
        config = ctx.config
        target = TARGETS.get(config.target)
        ctx.mode = target.resolve_mode(config.bits, config.mode)
        ctx.tolerance = Tolerance.for_bits(config.bits, config.tolerance)
        ctx.target = bound = target.bind(dict(config.target_options))  # options checked once, here
        ranges = config.calibration_method or "minmax"  # ChooseDefaults may pick the family's instead
        candidates = bound.candidates(config.bits, ctx.mode, ranges)
        if config.bits == 4:  # --block-size / --algorithm
            size, algorithm = config.block_size, config.weight_algorithm
            candidates = [replace(c, block_size=size, weight_algorithm=algorithm) for c in candidates]
        ctx.candidates, ctx.qc = candidates, candidates[0]
        method = QUANTIZERS.get(ctx.qc.mode)
        if (config.exclude and not method.honours_exclude) or (config.include and not method.honours_include):
            raise ConfigError(
                f"--exclude/--include do not apply to {ctx.qc.mode} mode here: --exclude works with "
                f"{', '.join(choices.modes('honours_exclude'))}, --include with "
                f"{', '.join(choices.modes('honours_include'))}."
            )
        if config.recover:
            from qconvert.recover import RECOVERY

            for name in config.recover:
                RECOVERY.get(name)  # an unknown name lists the valid ones
        if config.out_dir is not None:  # refuse early, before any expensive work
            check_output_dir(config.out_dir, config.force)
