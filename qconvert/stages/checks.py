"""What `qconvert validate` will check, decided before any work: ChooseTolerance (the bit width's defaults <
qconvert.toml / pyproject.toml < --tolerance) and PlanChecks (the reference, the held-out and calibration
data, the probe and the report files, each refused here when it cannot work)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qconvert.errors import CalibrationError, ConfigError
from qconvert.settings import DEFAULT_BITS, ValidateConfig
from qconvert.stages.base import Stage
from qconvert.stages.context import ValidateContext
from qconvert.tolerance import MODEL_METRICS, Bound, Tolerance
from qconvert.validation.standin import reference_onnx

if TYPE_CHECKING:
    from qconvert.results import Manifest


class ChooseTolerance(Stage[ValidateContext]):
    name = "tolerance"
    needs = ("manifest",)
    gives = ("bits", "tolerance", "tolerance_source", "model_bounds", "per_output", "token_kinds")

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.tolerance import parse_tolerance, tolerance_from_files

        config, manifest = ctx.config, ctx.manifest
        ctx.bits = config.bits or (
            DEFAULT_BITS if manifest is None else manifest.run_config().quantization.bits
        )
        file_bounds, ctx.tolerance_source = (
            tolerance_from_files(config.settings_dir) if config.settings_dir is not None else ((), None)
        )
        given = parse_tolerance(config.tolerance) if config.tolerance else ()
        if config.require_speedup and not any(b.metric == "speedup" for b in (*file_bounds, *given)):
            given = (*given, Bound("speedup", 1.0, explicit=True))
        # a text model's token outputs (export records them): embedding_cosine / next_token_agreement too
        ctx.token_kinds = {} if manifest is None else dict(manifest.source.token_outputs)
        ctx.tolerance = Tolerance.layered(ctx.bits, file_bounds, given, text=bool(ctx.token_kinds))
        ctx.model_bounds = [b for b in ctx.tolerance.bounds if b.metric in MODEL_METRICS]
        ctx.per_output = Tolerance(tuple(b for b in ctx.tolerance.bounds if b.metric not in MODEL_METRICS))


def manifest_data(manifest: Manifest | None, key: str) -> Path | None:
    """The data file an export used: its --data / --calibration (`key`), or the built-in model's own set."""
    from qconvert.sources import BUILTIN_MODELS, DEFAULT_MODEL, zoo_root
    from qconvert.trust import data_named_by_manifest

    if manifest is None:
        return None
    run = manifest.run_config()
    named = run.datasets.data if key == "data" else run.datasets.calibration
    if named:
        return data_named_by_manifest(named, key)  # never code the manifest names
    if manifest.source.kind == "builtin":
        model = BUILTIN_MODELS.get(run.model.source or DEFAULT_MODEL)
        if model is None:
            return None
        if key == "calibration":
            return zoo_root() / "calibration" / model.calibration
        if not run.datasets.calibration:  # export validated on the built-in held-out set
            return zoo_root() / "calibration" / model.heldout
    return None


def _model_checks(config: ValidateConfig, bounds: list[Bound], ref_spec: str, has_onnx: bool) -> None:
    """A whole-model bound needs what measures it: task_drop --metric, collapse_rate --probe collapse;
    the probe and a speedup bound need the reference as ONNX."""
    for bound in bounds:
        if bound.metric == "task_drop" and not config.metric:
            raise ConfigError(
                f"tolerance {bound.describe()} needs a task metric: pass --metric file.py:fn "
                "(fn(outputs, labels) -> float, higher is better)."
            )
        if bound.metric == "collapse_rate" and "collapse" not in config.probes:
            raise ConfigError(
                f"tolerance {bound.describe()} is measured by the collapse probe: add --probe collapse."
            )
    if "collapse" in config.probes and not has_onnx:
        raise ConfigError(
            f"--probe collapse runs the reference on sequences it builds, so it needs the reference as ONNX; "
            f"--reference {ref_spec} is not an .onnx file. Give the fp32 .onnx (an OUT_DIR's reference.onnx)."
        )
    if any(b.metric == "speedup" for b in bounds) and not has_onnx:
        raise ConfigError(
            "--require-speedup times the candidate against the reference ONNX: give --reference REF.onnx, or "
            "an OUT_DIR as CANDIDATE (it has reference.onnx)."
        )


def _data_path(config: ValidateConfig, manifest: Manifest | None, notes: list[str]) -> Path:
    """--data, else the data the export validated on (with a note saying so)."""
    if config.data:
        return Path(config.data)
    path = manifest_data(manifest, "data")
    if path is None:
        raise CalibrationError(
            "validation needs held-out inputs: pass --data DATA (.npz keyed by input name, with 'labels' "
            "for accuracy). Never the calibration samples."
        )
    if not path.exists():
        raise CalibrationError(
            f"the export validated on {path}, which is not here; pass --data DATA (held-out samples)."
        )
    notes.append(f"no --data given: validating on the data the export validated on ({path})")
    return path


def _check_report_files(config: ValidateConfig, user_files: list[Path]) -> None:
    """--json, --junit and --html: distinct, and writable without replacing an input or (without
    --force) an existing file; refused here, before any expensive work."""
    from qconvert.artifacts import check_output_file

    reports = [
        (f, p)
        for f, p in (("--json", config.json_out), ("--junit", config.junit_out), ("--html", config.html_out))
        if p is not None
    ]
    if len({Path(p).resolve() for _, p in reports}) < len(reports):
        raise ConfigError("--json, --junit and --html name the same file; give each its own path.")
    for flag, report_path in reports:
        check_output_file(report_path, config.force, user_files, flag)


class PlanChecks(Stage[ValidateContext]):
    name = "plan"
    needs = ("model_path", "out_dir", "manifest", "model_bounds")
    gives = (
        "reference_spec",
        "reference_onnx",
        "probe_kwargs",
        "data_path",
        "calibration_path",
        "user_files",
    )

    def run(self, ctx: ValidateContext) -> None:
        from qconvert.validation.collapse import collapse_options

        config, out_dir = ctx.config, ctx.out_dir
        ref_spec = config.reference or (str(out_dir / "reference.onnx") if out_dir else None)
        if ref_spec is None:
            raise ConfigError(
                f"--reference is needed when CANDIDATE is an .onnx file ({ctx.model_path}): give the fp32 .onnx "
                "or the torch SOURCE (file.py:factory) it was made from."
            )
        ctx.reference_spec = ref_spec
        ctx.reference_onnx = reference_onnx(ref_spec, out_dir)  # decided once, here
        _model_checks(config, ctx.model_bounds, ref_spec, ctx.reference_onnx is not None)
        ctx.probe_kwargs = collapse_options(config.probe_options) if "collapse" in config.probes else None
        ctx.data_path = _data_path(config, ctx.manifest, ctx.notes)
        ctx.calibration_path = (
            Path(config.calibration_data)
            if config.calibration_data
            else manifest_data(ctx.manifest, "calibration")
        )
        ref_file = (
            ref_spec.rpartition(":")[0] if ":" in ref_spec and not Path(ref_spec).exists() else ref_spec
        )
        metric_file = config.metric.rpartition(":")[0] if config.metric else ""
        ctx.user_files = [
            p
            for p in (
                ctx.model_path,
                Path(ref_file),
                ctx.data_path,
                ctx.calibration_path,
                Path(metric_file) if metric_file.endswith(".py") else None,
            )
            if p is not None
        ]
        _check_report_files(config, ctx.user_files)
