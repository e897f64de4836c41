"""`qconvert validate`: an existing candidate against a reference, as a release gate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.benchmark import interleaved_latency
from qconvert.calibrate import Dataset, ModelInput, load_dataset
from qconvert.config import (
    DataOptions,
    Tolerance,
    ValidateConfig,
)
from qconvert.errors import (
    CalibrationError,
    ConfigError,
    QConvertError,
)
from qconvert.quantize.bf16 import emulate_bf16
from qconvert.quantize.float16 import emulate_fp16
from qconvert.runtime import make_session
from qconvert.sources import load_source
from qconvert.stages._shared import (
    Progress,
    model_inputs,
    no_progress,
    reference_outputs,
    stage,
)
from qconvert.validation import Interval, TokenOutputs, ValidationResult, evaluate
from qconvert.validation.standin import emulation, not_here

log = logging.getLogger(__name__)

MODEL_CHECKS = "model"  # the Check.output of whole-model checks (task_drop, speedup)


@dataclass(frozen=True)
class ValidationRun:
    """What `validate` measured: the tolerance checks (truthy when the verdict is PASSED) and their
    context."""

    validation: ValidationResult
    context: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.validation)

    @property
    def verdict(self) -> str:
        """PASSED, FAILED or INCONCLUSIVE (validation.intervals)."""
        return self.validation.verdict

    def __bool__(self) -> bool:
        return self.passed

    @property
    def notes(self) -> list[str]:
        return list(self.context.get("notes", []))

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "verdict": self.verdict,
            **self.context,
            "seconds": self.seconds,
            "validation": self.validation.as_json(),
        }


def _onnx_io(path: Path, flag: str) -> tuple[list[ModelInput], list[str]]:
    """The graph inputs (as ModelInput, batch axis included) and output names of an ONNX file."""
    import onnx

    from qconvert.errors import SourceError, brief

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise SourceError(
            f"{flag} {path}: not a valid ONNX model ({type(e).__name__}: {brief(e)}). Check the file is complete."
        ) from e
    init = {i.name for i in proto.graph.initializer}
    inputs = []
    for i in proto.graph.input:
        if i.name in init:
            continue
        t = i.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim
        )
        dtype = str(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)))
        inputs.append(ModelInput(i.name, dims, dtype))
    return inputs, [o.name for o in proto.graph.output]


def _check_same_inputs(candidate: list[ModelInput], reference: list[ModelInput], ref: str) -> None:

    cand_names, ref_names = [i.name for i in candidate], [i.name for i in reference]
    if sorted(cand_names) != sorted(ref_names):
        raise ConfigError(
            f"--reference {ref}: its inputs {ref_names} are not the candidate's {cand_names}. Give the "
            "reference the candidate was made from (the same inputs, by name)."
        )
    by_name = {i.name: i for i in reference}
    for c in candidate:
        r = by_name[c.name]
        shape_ok = len(r.dims) == len(c.dims) and all(
            a is None or b is None or a == b for a, b in zip(r.dims[1:], c.dims[1:], strict=True)
        )
        if not shape_ok or r.dtype != c.dtype:
            raise ConfigError(
                f"--reference {ref}: input {c.name!r} takes samples of shape {r.sample_shape()} ({r.dtype}); "
                f"the candidate's takes {c.sample_shape()} ({c.dtype}). Give the reference the candidate was "
                "made from."
            )


def _resolve_candidate(spec: str | Path) -> tuple[Path, Path | None, dict[str, Any] | None]:
    """(model file, OUT_DIR or None, manifest or None)."""
    from qconvert.errors import SourceError
    from qconvert.runtime import read_manifest

    path = Path(spec)
    if path.is_dir():
        manifest = read_manifest(path)
        model = path / "model.onnx"
        if not model.is_file():
            raise SourceError(f"CANDIDATE {spec}: the folder has no model.onnx. Give a complete OUT_DIR.")
        return model, path, manifest
    if path.is_file() and path.suffix == ".onnx":
        return path, None, None
    if path.is_file():
        raise SourceError(f"CANDIDATE {spec}: not an .onnx file. Give an .onnx file or an OUT_DIR.")
    raise SourceError(
        f"CANDIDATE {spec}: no such file or folder. Give an .onnx file or a folder written by `qconvert export`."
    )


def _manifest_data(manifest: dict[str, Any] | None, key: str) -> Path | None:
    """The data file an export used: its --data / --calibration, or the built-in model's own set."""
    from qconvert.sources import BUILTIN_MODELS, DEFAULT_MODEL, zoo_root
    from qconvert.trust import data_named_by_manifest

    if manifest is None:
        return None
    settings = manifest.get("settings", {})
    if settings.get(key):
        return data_named_by_manifest(settings[key], key)  # never code the manifest names
    if manifest.get("source", {}).get("kind") == "builtin":
        model = BUILTIN_MODELS.get(settings.get("source") or DEFAULT_MODEL)
        if model is None:
            return None
        if key == "calibration":
            return zoo_root() / "calibration" / model.calibration
        if not settings.get("calibration"):  # export validated on the built-in held-out set
            return zoo_root() / "calibration" / model.heldout
    return None


def _sample_keys(data: Dataset) -> list[bytes]:
    import hashlib

    names = sorted(data.feeds)
    return [
        hashlib.sha256(b"".join(data.feeds[n][i].tobytes() for n in names)).digest() for i in range(len(data))
    ]


def _calibration_notes(
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


def _load_metric(spec: str) -> Callable[..., Any]:
    """`--metric file.py:fn` or `module:fn`, imported the way a SOURCE factory is."""
    from qconvert.sources import import_callable

    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(
            f"--metric {spec}: is not file.py:fn or package.module:fn. Example: --metric metrics.py:f1"
        )
    return import_callable(spec, label="--metric", error=ConfigError)[1]


TASK_RESAMPLES = 200  # bootstrap resamples of task_drop: each scores reference and candidate once more


def _task_drop_interval(
    fn: Callable[..., Any],
    spec: str,
    names: list[str],
    ref_out: list[np.ndarray],
    cand_out: list[np.ndarray],
    labels: np.ndarray | None,
    level: float,
) -> Interval:
    """task_drop's interval: the reference and the candidate scored by `fn` on the same bootstrap
    resamples of the held-out samples (paired), TASK_RESAMPLES times."""
    from qconvert.validation.intervals import bootstrap_statistic

    def drop(idx: np.ndarray) -> float:
        pick = None if labels is None else labels[idx]
        ref = {n: o[idx] for n, o in zip(names, ref_out, strict=True)}
        cand = {n: o[idx] for n, o in zip(names, cand_out, strict=True)}
        return _task_score(fn, spec, ref, pick, "reference", resample=True) - _task_score(
            fn, spec, cand, pick, "candidate", resample=True
        )

    return bootstrap_statistic(len(ref_out[0]), drop, level, TASK_RESAMPLES)


def _task_score(
    fn: Callable[..., Any],
    spec: str,
    outputs: dict[str, np.ndarray],
    labels: np.ndarray | None,
    which: str,
    resample: bool = False,
) -> float:
    import math

    try:
        value = fn(outputs, labels)
    except Exception as e:
        where = (
            "on a bootstrap resample of the held-out samples (a subset with repeats: qconvert resamples to put "
            "a confidence interval on task_drop, so fn must take any such subset)"
            if resample
            else "on the whole held-out set"
        )
        raise ConfigError(
            f"--metric {spec}: fn(outputs, labels) raised {type(e).__name__}: {e} (on the {which}'s outputs, "
            f"{where}; outputs: {', '.join(outputs)}; labels: {'none' if labels is None else len(labels)})."
        ) from e
    try:
        score = float(value)
    except (TypeError, ValueError):
        score = math.nan
    if isinstance(value, bool) or not math.isfinite(score):
        raise ConfigError(
            f"--metric {spec}: returned {value!r} for the {which}; it must return one finite number, higher "
            "is better."
        )
    return score


def _reference_run(
    spec: str, candidate_inputs: list[ModelInput], data: Dataset
) -> tuple[str, list[str], list[np.ndarray], Path | None]:
    """Run the reference on `data`: (what it is, output names, outputs, its ONNX file if it is one)."""
    from qconvert.errors import SourceError, brief

    path = Path(spec)
    if path.is_dir():
        raise SourceError(
            f"--reference {spec}: is a folder. Give the fp32 .onnx (an OUT_DIR's reference.onnx) or a torch "
            "SOURCE (file.py:factory)."
        )
    if path.suffix == ".onnx":
        if not path.is_file():
            raise SourceError(f"--reference {spec}: no such .onnx file.")
        ref_inputs, ref_outputs = _onnx_io(path, "--reference")
        _check_same_inputs(candidate_inputs, ref_inputs, spec)
        return str(path), ref_outputs, make_session(path).run(data), path
    loaded = load_source(spec)
    _check_same_inputs(candidate_inputs, model_inputs(loaded), spec)
    if not loaded.is_torch:
        assert loaded.onnx_path is not None
        return loaded.origin, list(loaded.output_names), make_session(loaded.onnx_path).run(data), None
    try:
        outs = reference_outputs(loaded, data, [])
    except QConvertError:
        raise
    except Exception as e:
        raise SourceError(
            f"--reference {spec}: the model's forward raised {type(e).__name__}: {brief(e)} on the --data inputs."
        ) from e
    return loaded.origin, list(loaded.output_names), outs, None


def _match_outputs(
    names: list[str], ref_names: list[str], ref_out: list[np.ndarray], ref: str, by_position: bool
) -> tuple[list[np.ndarray], list[str]]:
    """The reference's outputs in the candidate's order: by name, else (same count) by position."""

    if sorted(ref_names) == sorted(names):
        by_name = dict(zip(ref_names, ref_out, strict=True))
        return [by_name[n] for n in names], []
    if len(ref_names) == len(names) and (by_position or len(names) == 1):
        return ref_out, [
            f"the reference's outputs ({', '.join(ref_names)}) are named differently from the candidate's "
            f"({', '.join(names)}): matched by position"
        ]
    raise ConfigError(
        f"--reference {ref}: its outputs ({', '.join(ref_names)}) do not match the candidate's "
        f"({', '.join(names)}). Give the reference the candidate was made from."
    )


def _collapse_settings(
    config: ValidateConfig, model_bounds: list[Any], ref_spec: str, out_dir: Path | None
) -> dict[str, Any] | None:
    """probe_collapse's keyword arguments from --probe-option (None: no --probe collapse), checked
    before any expensive work: a collapse_rate bound needs the probe, the probe needs an ONNX reference."""
    from qconvert.validation.collapse import collapse_options

    bound = next((b for b in model_bounds if b.metric == "collapse_rate"), None)
    if "collapse" not in config.probes:
        if bound is not None:
            raise ConfigError(
                f"tolerance {bound.describe()} is measured by the collapse probe: add --probe collapse."
            )
        return None
    in_out_dir = out_dir is not None and (out_dir / "reference.onnx").is_file()
    has_onnx = Path(ref_spec).suffix == ".onnx" or in_out_dir
    if not has_onnx:
        raise ConfigError(
            f"--probe collapse runs the reference on sequences it builds, so it needs the reference as ONNX; "
            f"--reference {ref_spec} is not an .onnx file. Give the fp32 .onnx (an OUT_DIR's reference.onnx)."
        )
    return collapse_options(config.probe_options)


def _artifact_tokenizer(config: ValidateConfig, out_dir: Path | None) -> DataOptions:
    """The data options, with an OUT_DIR's own tokenizer (copied there from a Hugging Face source)
    reading text --data unless --tokenizer names another."""
    options = config.data_options
    if options.tokenizer is None and out_dir is not None and (out_dir / "tokenizer_config.json").is_file():
        return replace(options, tokenizer=str(out_dir))
    return options


def validate(config: ValidateConfig, progress: Progress | None = None) -> ValidationRun:
    """Validate an existing candidate (an .onnx file or an OUT_DIR) against a reference on the same
    inputs, apply the tolerance (defaults < qconvert.toml / pyproject.toml < --tolerance), and write
    the --json / --junit reports. Raises QConvertError (exit 2) on bad input; an out-of-tolerance
    candidate is a falsy ValidationRun (exit 1), not an exception."""
    import tempfile

    from qconvert.artifacts import check_output_file, write_text_atomic
    from qconvert.config import (
        DEFAULT_BITS,
        MODEL_METRICS,
        Bound,
        parse_tolerance,
        tolerance_from_files,
    )
    from qconvert.junit import render_junit
    from qconvert.runtime import CPU, manifest_providers
    from qconvert.trust import check_data_vocab, verify_artifact
    from qconvert.validation import Check

    report_progress = progress or no_progress
    start = time.perf_counter()
    notes: list[str] = []

    model_path, out_dir, manifest = _resolve_candidate(config.candidate)
    verified = verify_artifact(out_dir, manifest) if out_dir is not None and manifest is not None else None
    notes.extend([verified.note()] if verified else [])
    inputs, names = _onnx_io(model_path, "CANDIDATE")
    settings = (manifest or {}).get("settings", {})
    bits = config.bits or settings.get("bits") or DEFAULT_BITS
    file_bounds, tolerance_source = (
        tolerance_from_files(config.settings_dir) if config.settings_dir is not None else ((), None)
    )
    given = parse_tolerance(config.tolerance) if config.tolerance else ()
    if config.require_speedup and not any(b.metric == "speedup" for b in (*file_bounds, *given)):
        given = (*given, Bound("speedup", 1.0, explicit=True))
    # a text model's token outputs (export records them): embedding_cosine / next_token_agreement too
    token_kinds: dict[str, str] = (manifest or {}).get("source", {}).get("token_outputs") or {}
    tolerance = Tolerance.layered(bits, file_bounds, given, text=bool(token_kinds))
    model_bounds = [b for b in tolerance.bounds if b.metric in MODEL_METRICS]
    per_output = Tolerance(tuple(b for b in tolerance.bounds if b.metric not in MODEL_METRICS))

    ref_spec = config.reference or (str(out_dir / "reference.onnx") if out_dir else None)
    if ref_spec is None:
        raise ConfigError(
            f"--reference is needed when CANDIDATE is an .onnx file ({model_path}): give the fp32 .onnx or the "
            "torch SOURCE (file.py:factory) it was made from."
        )
    probe_kwargs = _collapse_settings(config, model_bounds, ref_spec, out_dir)
    manifest_data = _manifest_data(manifest, "data")
    data_path = Path(config.data) if config.data else manifest_data
    if data_path is None:
        raise CalibrationError(
            "validation needs held-out inputs: pass --data DATA (.npz keyed by input name, with 'labels' "
            "for accuracy). Never the calibration samples."
        )
    if not config.data:
        if not data_path.exists():
            raise CalibrationError(
                f"the export validated on {data_path}, which is not here; pass --data DATA (held-out samples)."
            )
        notes.append(f"no --data given: validating on the data the export validated on ({data_path})")
    calib_path = (
        Path(config.calibration_data) if config.calibration_data else _manifest_data(manifest, "calibration")
    )
    metric_file = config.metric.rpartition(":")[0] if config.metric else ""
    inputs_given = [
        p
        for p in (
            model_path,
            Path(
                ref_spec.rpartition(":")[0] if ":" in ref_spec and not Path(ref_spec).exists() else ref_spec
            ),
            data_path,
            calib_path,
            Path(metric_file) if metric_file.endswith(".py") else None,
        )
        if p is not None
    ]
    reports = [
        (f, p)
        for f, p in (("--json", config.json_out), ("--junit", config.junit_out), ("--html", config.html_out))
        if p is not None
    ]
    if len({Path(p).resolve() for _, p in reports}) < len(reports):
        raise ConfigError("--json, --junit and --html name the same file; give each its own path.")
    for flag, report_path in reports:  # refuse early, before any expensive work
        check_output_file(report_path, config.force, inputs_given, flag)

    with stage("load", report_progress, "reading the candidate and the data"):
        heldout = load_dataset(data_path, inputs, flag="--data", options=_artifact_tokenizer(config, out_dir))
        check_data_vocab(model_path, ("--data", heldout))  # before anything runs on it
        notes.extend(
            _calibration_notes(
                calib_path, bool(config.calibration_data), data_path, heldout, inputs, config.data_options
            )
        )
        metric_fn = _load_metric(config.metric) if config.metric else None

    with stage("reference", report_progress, f"running the reference on {len(heldout)} samples"):
        reference, ref_names, ref_out, reference_onnx = _reference_run(ref_spec, inputs, heldout)
        ref_out, matched = _match_outputs(
            names, ref_names, ref_out, ref_spec, by_position=reference_onnx is None
        )
        notes.extend(matched)
    if reference_onnx is None and out_dir is not None and (out_dir / "reference.onnx").is_file():
        reference_onnx = out_dir / "reference.onnx"  # for timing only

    providers = manifest_providers(out_dir, manifest) if out_dir is not None and manifest else [CPU]
    providers = providers or [CPU]
    quantization = (manifest or {}).get("quantization", {})
    # the same decision export made: the manifest's target says whether this machine runs it as the
    # target will (an arm64 graph on x86 runs its exact Q/DQ arithmetic, not x86's fused kernels)
    why_not_here = not_here((manifest or {}).get("target", {}).get("name"), providers)
    native = why_not_here is None
    stand_in = emulation(
        quantization.get("mode"),
        bool(quantization.get("calibration_table")),
        why_not_here,
        quantization.get("layer_formats") or (),
    )
    with tempfile.TemporaryDirectory(prefix="qconvert-validate-") as work:
        checked = model_path
        if stand_in == "fp16":
            checked = emulate_fp16(
                model_path, Path(work) / "fp16_emulated.onnx", quantization.get("external_data", False)
            )
            notes.append(
                "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
                "to fp16 where the fp16 graph produces it (overflow included)."
            )
        if stand_in == "bf16":
            checked = emulate_bf16(
                model_path, Path(work) / "bf16_emulated.onnx", quantization.get("external_data", False)
            )
            notes.append(
                "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
                "to bfloat16 where the bf16 graph produces it."
            )
        if stand_in == "implicit":
            notes.append(
                "implicit int8: model.onnx is the fp32 graph plus a calibration table, and that is what was "
                "checked here; TensorRT quantizes it on the GPU. `qconvert export` measures an explicit Q/DQ "
                "stand-in with the same ranges."
            )
        with stage("candidate", report_progress, f"running the candidate on {len(heldout)} samples"):
            candidate = make_session(checked, providers, optimize=native and checked == model_path)
            cand_out = candidate.run(heldout)
        collapse = None
        if probe_kwargs is not None:
            from qconvert.validation.collapse import probe_collapse

            with stage("probe", report_progress, "collapse probe: held-out pairs, copy and count sequences"):
                reference_for_probe = Path(ref_spec) if Path(ref_spec).suffix == ".onnx" else reference_onnx
                assert reference_for_probe is not None  # _collapse_settings checked there is one
                if reference_for_probe != Path(ref_spec):
                    notes.append(
                        f"--probe collapse ran the fp32 export {reference_for_probe} as the reference"
                    )
                collapse = probe_collapse(
                    reference_for_probe,
                    checked,
                    heldout,
                    optimize=candidate.optimized,
                    providers=providers,
                    **probe_kwargs,
                )
    if not native:
        notes.append(
            f"{why_not_here}: the candidate ran on {candidate.used} with graph "
            "optimizations off, so the graph's arithmetic runs as written."
        )

    with stage("validate", report_progress, "comparing outputs"):
        for name, r, c in zip(names, ref_out, cand_out, strict=True):
            if r.shape != c.shape:
                raise ConfigError(
                    f"--reference {ref_spec}: output {name!r} has shape {list(r.shape)} in the reference and "
                    f"{list(c.shape)} in the candidate. Give the reference the candidate was made from."
                )
        try:
            mask = heldout.feeds.get("attention_mask")
            tokens = TokenOutputs(mask, token_kinds) if token_kinds and mask is not None else None
            validation = evaluate(
                names, ref_out, cand_out, per_output, heldout.labels, tokens, config.confidence
            )
        except ConfigError as e:
            if tolerance_source is None:
                raise
            raise ConfigError(f"{e} (the tolerance comes from --tolerance and {tolerance_source})") from None
        task: dict[str, Any] | None = None
        if metric_fn is not None and config.metric:
            ref_score = _task_score(
                metric_fn, config.metric, dict(zip(names, ref_out, strict=True)), heldout.labels, "reference"
            )
            cand_score = _task_score(
                metric_fn, config.metric, dict(zip(names, cand_out, strict=True)), heldout.labels, "candidate"
            )
            task = {
                "metric": config.metric,
                "reference": ref_score,
                "candidate": cand_score,
                "drop": ref_score - cand_score,
            }
        extra: list[Check] = []
        for bound in (b for b in model_bounds if b.metric == "task_drop"):
            if task is None:
                raise ConfigError(
                    f"tolerance {bound.describe()} needs a task metric: pass --metric file.py:fn "
                    "(fn(outputs, labels) -> float, higher is better)."
                )
            assert metric_fn is not None and config.metric  # task is measured only with --metric
            interval = _task_drop_interval(
                metric_fn, config.metric, names, ref_out, cand_out, heldout.labels, config.confidence
            )
            task["interval"] = interval.as_json()
            extra.append(Check(MODEL_CHECKS, bound, task["drop"], interval))
        for bound in (b for b in model_bounds if b.metric == "collapse_rate"):
            assert collapse is not None  # _collapse_settings refused the bound without the probe
            extra.append(Check(MODEL_CHECKS, bound, collapse.rate, collapse.interval(config.confidence)))
        if collapse is not None and not any(b.metric == "collapse_rate" for b in model_bounds):
            notes.append(
                "--probe collapse: reported, not checked; add a bound with --tolerance 'collapse_rate<=X' to "
                "gate on it"
            )
        if task is not None and not any(b.metric == "task_drop" for b in model_bounds):
            notes.append(
                f"--metric {config.metric}: reported, not checked; add a bound with --tolerance 'task_drop<=X' to "
                "gate on it"
            )

    speed: dict[str, Any] | None = None
    speed_bounds = [b for b in model_bounds if b.metric == "speedup"]
    if speed_bounds:
        if reference_onnx is None:
            raise ConfigError(
                "--require-speedup times the candidate against the reference ONNX: give --reference REF.onnx, or "
                "an OUT_DIR as CANDIDATE (it has reference.onnx)."
            )
        with stage("benchmark", report_progress, "timing candidate and reference (interleaved)"):
            cand_bench = make_session(model_path, providers)
            ref_bench = make_session(reference_onnx, providers)
            fixed = [i.shape[0] for i in cand_bench.inner.get_inputs() if isinstance(i.shape[0], int)]
            size = fixed[0] if fixed else config.latency_batch
            batch = next(heldout.subset(slice(0, size)).batches(size))
            lat = interleaved_latency(
                {
                    "reference": lambda: ref_bench.inner.run(None, batch),
                    "candidate": lambda: cand_bench.inner.run(None, batch),
                },
                repeats=config.latency_repeats,
            )
        ratio = lat["reference"].p50_ms / lat["candidate"].p50_ms
        speed = {
            "provider": cand_bench.used,
            "batch": size,
            "reference": lat["reference"].as_json(),
            "candidate": lat["candidate"].as_json(),
            "speedup": ratio,
        }
        extra.extend(Check(MODEL_CHECKS, b, ratio) for b in speed_bounds)
        notes.append(
            f"latency p50 at batch {size} on {cand_bench.used}: candidate {lat['candidate'].p50_ms:.3f} ms, "
            f"reference {lat['reference'].p50_ms:.3f} ms; speedup {ratio:.2f}x (reference time / candidate "
            "time, measured interleaved)"
        )
    validation = replace(validation, checks=(*validation.checks, *extra))
    context: dict[str, Any] = {
        "candidate": str(config.candidate),
        "model": str(model_path),
        "reference": reference,
        "data": str(data_path),
        "samples": len(heldout),
        "labels": heldout.labels is not None,
        "provider": candidate.used,
        "exact_qdq": not candidate.optimized,
        "bits": bits,
        "tolerance": [b.describe() for b in tolerance.bounds],
        "tolerance_source": tolerance_source,
        "task": task,
        "speed": speed,
        "collapse": None if collapse is None else collapse.as_json(),
        "notes": notes,
        **(verified.as_json() if verified else {"manifest_sha256": None}),
    }
    run = ValidationRun(validation, context, time.perf_counter() - start)
    if config.json_out is not None:
        import json

        text = json.dumps(run.as_json(), indent=2, default=str) + "\n"
        write_text_atomic(config.json_out, text, config.force, inputs_given, "--json")
    if config.junit_out is not None:
        write_text_atomic(
            config.junit_out, render_junit(run.as_json()), config.force, inputs_given, "--junit"
        )
    if config.html_out is not None:
        from qconvert.report_html import render_html

        page = render_html({**run.as_json(), "target": config.candidate, "mode": "validate"})
        write_text_atomic(config.html_out, page, config.force, inputs_given, "--html")
    return run
