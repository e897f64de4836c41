"""The order of the stages: source -> export -> prepare -> quantize -> target -> validate -> artifacts.

This is the only module that knows that order. Each stage is called with values and returns
values; an unexpected exception inside one is reported as a bug in that stage.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import platform
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from qconvert import artifacts
from qconvert.artifacts import ArtifactDir, check_output_dir, onnx_size, sha256_file
from qconvert.benchmark import interleaved_latency
from qconvert.calibrate import Dataset, ModelInput, load_dataset, random_dataset
from qconvert.config import (
    DEFAULT_LATENCY_BATCH,
    DEFAULT_OUT_ROOT,
    HOLDOUT_FRACTION,
    RANDOM_DATA,
    RANDOM_HELDOUT_SAMPLES,
    RANDOM_HELDOUT_SEED,
    DataOptions,
    QuantizeConfig,
    RunConfig,
    Tolerance,
    TransformerFusion,
    ValidateConfig,
)
from qconvert.errors import (
    CalibrationError,
    ConfigError,
    InternalError,
    QConvertError,
    QuantizationError,
    TargetError,
)
from qconvert.onnx_export import onnx_from_torch
from qconvert.prepare import lost_dynamic_axes, prepared_from_onnx, prepared_transformer
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import bf16_notes, emulate_bf16
from qconvert.quantize.float16 import emulate_fp16
from qconvert.quantize.int4 import int4_notes
from qconvert.quantize.selectors import node_infos, select
from qconvert.runtime import make_session
from qconvert.sources import LoadedModel, load_source
from qconvert.targets import TARGETS, Provider, Target
from qconvert.validation import TokenOutputs, ValidationResult, evaluate

log = logging.getLogger(__name__)

FORMAT_MARGIN = 0.95  # a candidate format must be 5% faster than the default one to be kept
SMALL_HELDOUT = 100
# providers that run onnxruntime's com.microsoft contrib ops (the transformer fusions' output)
CONTRIB_OP_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
SELECTABLE_MODES = ("static", "dynamic", "fp16")  # modes whose quantizer honours --exclude
INCLUDE_MODES = (
    "static",
    "dynamic",
)  # and --include  # below this, say how coarse agreement and accuracy figures are

# progress(stage, message, done, total): done/total are None for stages without a count
Progress = Callable[[str, str, "int | None", "int | None"], None]


def _no_progress(stage: str, message: str, done: int | None = None, total: int | None = None) -> None:
    return None


@dataclass(frozen=True)
class RunResult:
    """What `export` produced: where, whether it passed, and everything measured."""

    out_dir: Path
    validation: ValidationResult
    manifest: dict[str, Any]
    report: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.validation)

    def __bool__(self) -> bool:
        return self.passed


@contextlib.contextmanager
def _stage(name: str, progress: Progress, message: str) -> Iterator[None]:
    progress(name, message, None, None)
    try:
        yield
    except QConvertError:
        raise
    except Exception as e:
        raise InternalError(f"unexpected failure in the {name!r} stage: {type(e).__name__}: {e}") from e


def default_out_dir(loaded: LoadedModel, target: str, bits: int, mode: str) -> Path:
    fmt = {16: "fp16", 8: "int8", 4: "int4"}[bits]
    if bits == 16 and mode in ("bf16", "static"):
        fmt = "bf16" if mode == "bf16" else "a16w8"
    suffix = "" if mode in ("static", "fp16", "bf16") else f"-{mode}"  # fp16/bf16 are already in `fmt`
    return DEFAULT_OUT_ROOT / f"{loaded.name}-{target}-{fmt}{suffix}"


def _model_inputs(loaded: LoadedModel) -> list[ModelInput]:
    return [
        ModelInput(name, dims, str(example.dtype))
        for name, dims, example in zip(
            loaded.input_names, loaded.input_dims, loaded.example_inputs, strict=True
        )
    ]


def _load_data(
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
    return (calibration if mode == "static" or gptq else None), heldout, notes


def _data_options(config: RunConfig, loaded: LoadedModel) -> DataOptions:
    """The data options, with the source's own tokenizer (a Hugging Face folder's) reading text DATA
    unless --tokenizer names another."""
    if config.data_options.tokenizer is None and loaded.tokenizer is not None:
        return replace(config.data_options, tokenizer=loaded.tokenizer)
    return config.data_options


def _token_outputs(loaded: LoadedModel, data: Dataset) -> TokenOutputs | None:
    """Which outputs of a text model get embedding_cosine / next_token_agreement, with the mask of `data`."""
    mask = data.feeds.get("attention_mask")
    if not loaded.token_outputs or mask is None:
        return None
    return TokenOutputs(mask=mask, kinds=loaded.token_outputs)


def _fusion(loaded: LoadedModel, providers: list[Provider]) -> TransformerFusion | None:
    """The transformer fusions to run in prepare: only where the target's first provider runs
    onnxruntime's contrib ops (CPU, CUDA); TensorRT, OpenVINO, QNN and CoreML take plain ONNX."""
    if loaded.fusion is None or not providers or providers[0].name not in CONTRIB_OP_PROVIDERS:
        return None
    return loaded.fusion


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


def _fastest(
    candidates: list[QuantizeConfig],
    prepared: Path,
    art: ArtifactDir,
    calibration: Dataset | None,
    heldout: Dataset,
    providers: list[Provider],
    config: RunConfig,
    on_batch: Callable[[int, int], None],
) -> tuple[QuantizeConfig, Path, dict[str, float]]:
    """Quantize with every candidate, time them interleaved, keep the fastest as model.onnx."""
    paths = {}
    for i, qc in enumerate(candidates):
        paths[qc.format] = QUANTIZERS.get(qc.mode)(
            prepared, art.work / f"candidate-{i}.onnx", qc, calibration, on_batch
        )
    batch = _latency_feed(heldout, config.latency_batch)
    runners: dict[str, Callable[[], object]] = {
        fmt: functools.partial(make_session(path, providers).inner.run, None, batch)
        for fmt, path in paths.items()
    }
    timed = interleaved_latency(runners, repeats=max(10, config.latency_repeats // 2))
    # the first candidate is the portable default; another must be clearly faster to replace it
    first = candidates[0].format
    best = min(timed, key=lambda fmt: timed[fmt].p50_ms)
    if timed[best].p50_ms > FORMAT_MARGIN * timed[first].p50_ms:
        best = first
    chosen = next(c for c in candidates if c.format == best)
    return chosen, art.copy_onnx(paths[best], "model.onnx"), {f: t.p50_ms for f, t in timed.items()}


def _latency_feed(data: Dataset, batch: int) -> dict[str, np.ndarray]:
    """Exactly `batch` held-out samples (repeated in order when there are fewer) for timing."""
    index = np.arange(batch) % len(data)
    return {name: values[index] for name, values in data.feeds.items()}


def _stand_in(
    qc: QuantizeConfig,
    model_path: Path,
    prepared: Path,
    work: Path,
    calibration: Dataset | None,
    not_here: str | None,
) -> tuple[Path, str | None]:
    """The graph validation runs, and a note when it is not model.onnx itself."""
    if qc.calibration_table:
        # Implicit int8: model.onnx is fp32. Validate an explicit Q/DQ graph built from the same
        # calibration with the target's rules, the closest stand-in for what TensorRT runs.
        simulated = replace(qc, mode="static", format="qdq", calibration_table=None)
        path = QUANTIZERS.get("static")(prepared, work / "simulated.onnx", simulated, calibration, None)
        return path, (
            "implicit int8: model.onnx is the fp32 graph plus a calibration table; the figures are for an "
            "explicit Q/DQ graph with the same ranges. TensorRT chooses each layer's precision itself and "
            "may keep some in fp16/fp32, so measure on the GPU before shipping."
        )
    if qc.mode == "fp16" and not_here is not None:
        # onnxruntime's CPU provider runs most fp16 nodes in fp32 and drops the casts between
        # them: it would neither round to fp16 nor overflow. Validate a stand-in that does both.
        path = emulate_fp16(model_path, work / "fp16_emulated.onnx", qc.external_data)
        return path, (
            "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
            "to fp16 where the fp16 graph produces it (overflow included); onnxruntime's CPU provider "
            "would run most of model.onnx in fp32 instead."
        )
    if qc.mode == "bf16" and not_here is not None:
        # the CPU provider has no bf16 MatMul/Gemm/Conv: the bf16 graph would not even load here
        path = emulate_bf16(model_path, work / "bf16_emulated.onnx", qc.external_data)
        return path, (
            "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor to "
            "bfloat16 (round to nearest even) where the bf16 graph produces it; the CPU provider cannot run "
            "model.onnx itself."
        )
    return model_path, None


def _check_target(
    target: Target, qc: QuantizeConfig, model_path: Path, providers: list[Provider]
) -> list[str]:
    """Raise TargetError when the graph or the provider options break the target's rules; return
    the nodes the provider would run in float between Q/DQ pairs."""
    import onnx

    quantized = onnx.load(str(model_path))
    problems = target.graph_violations(quantized, qc) + target.provider_violations(quantized, providers)
    if problems:
        raise TargetError(f"the quantized graph breaks the {target.name} rules: " + "; ".join(problems[:10]))
    return target.float_nodes(quantized)


def _cpu_kernel_gap(exact: ValidationResult, cpu: ValidationResult) -> list[str]:
    """A note when this machine's CPU int8 kernels compute something visibly different from the
    graph's exact Q/DQ arithmetic (e.g. saturation in the AVX2 int8 path without VNNI)."""
    lines = []
    for name, m in exact.outputs.items():
        c = cpu.outputs[name]
        key = "top1_agreement" if "top1_agreement" in m else "cosine"
        if m[key] - c[key] > 0.005:
            lines.append(
                f"run on this machine's CPU provider (fused int8 kernels), this graph gives {key} "
                f"{c[key]:.4f} for {name!r} instead of {m[key]:.4f}: the CPU's int8 path differs from the "
                "graph's arithmetic here (report.json: on_cpu_kernels). Use the cpu target for CPU deployment."
            )
    return lines


def _reference_outputs(loaded: LoadedModel, data: Dataset, fp32_out: list[np.ndarray]) -> list[np.ndarray]:
    """The original model's outputs: PyTorch itself for torch sources, else the fp32 ONNX."""
    if not loaded.is_torch:
        return fp32_out
    parts = [loaded.run_torch(batch) for batch in data.batches(256)]
    return [np.concatenate(p) for p in zip(*parts, strict=True)]


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("qconvert", "torch", "onnx", "onnxruntime", "onnxscript", "numpy"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def _command(config: RunConfig, out_dir: Path) -> str:
    parts = ["qconvert", "export"]
    if config.source:
        parts.append(config.source)
    parts += ["--bits", str(config.bits), "--target", config.target]
    for flag, value in (
        ("--mode", config.mode),
        ("--calibration", config.calibration),
        ("--data", config.data),
        ("--samples", config.samples),
        ("--tolerance", config.tolerance),
    ):
        if value is not None:
            parts += [flag, str(value)]
    for flag, selectors in (("--exclude", config.exclude), ("--include", config.include)):
        for selector in selectors:
            parts += [flag, selector]
    if config.bits == 4:
        parts += ["--block-size", str(config.block_size), "--algorithm", config.weight_algorithm]
    images = config.data_options
    if images.image_size is not None:
        parts += ["--image-size", "x".join(map(str, images.image_size))]
    for flag, channel_values in (("--mean", images.mean), ("--std", images.std)):
        if channel_values is not None:
            parts += [flag, ",".join(map(str, channel_values))]
    if images.layout != "nchw":
        parts += ["--layout", images.layout]
    if config.task is not None:
        parts += ["--task", config.task]
    text = config.data_options
    if text.tokenizer is not None:
        parts += ["--tokenizer", text.tokenizer]
    if text.max_length is not None:
        parts += ["--max-length", str(text.max_length)]
    if text.padding != "max_length":
        parts += ["--padding", text.padding]
    if not text.truncation:
        parts.append("--no-truncation")
    if config.latency_batch != DEFAULT_LATENCY_BATCH:
        parts += ["--latency-batch", str(config.latency_batch)]
    if config.calibration_method != "minmax":
        parts += ["--calibration-method", config.calibration_method]
    for name, value in config.target_options:
        parts += ["--target-option", f"{name}={value}"]
    if config.auto:
        parts.append("--auto")
        if config.auto_budget is not None:
            parts += ["--auto-budget", str(config.auto_budget)]
    for spec in config.inputs:
        parts += ["--input", f"{spec.name}:{'x'.join(map(str, spec.shape))}:{spec.dtype}"]
    parts += ["--opset", str(config.opset), "-o", str(out_dir)]
    return shlex.join(parts)


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    counts: dict[str, int] = {}
    for node in onnx.load(str(path), load_external_data=False).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def _sensitivity_unavailable(qc: QuantizeConfig) -> str | None:
    """Why per-layer sensitivity and --auto cannot run on this quantization (None: they can).
    Both need an explicit Q/DQ graph quantized by the static quantizer, which takes nodes_to_exclude."""
    if qc.calibration_table:
        return (
            "implicit int8 has no Q/DQ nodes in model.onnx (TensorRT picks each layer's precision "
            "itself), so there is no per-layer quantization to measure or to undo"
        )
    if qc.mode != "static":
        return (
            f"{qc.mode} mode: qconvert measures sensitivity and falls back to float only for static Q/DQ "
            "int8 graphs"
        )
    return None


def _float_nodes_note(float_nodes: list[str], provider: str) -> list[str]:
    if not float_nodes:
        return []
    return [
        f"{len(float_nodes)} node(s) sit between Q/DQ pairs but are not among the ops "
        f"{provider} runs in int8, so they run in float with a dequantize/quantize round "
        f"trip: {', '.join(float_nodes[:8])}{' ...' if len(float_nodes) > 8 else ''}"
    ]


@dataclass
class _Blame:
    """What per-layer sensitivity and --auto found, and the graph to ship when the fallback passed."""

    sensitivity: dict[str, Any]
    fallback: Any = None  # fallback.FallbackResult
    qc: QuantizeConfig | None = None  # the settings of the fallback graph, when it is model.onnx


def _blame(
    config: RunConfig,
    qc: QuantizeConfig,
    prepared: Path,
    calibration: Dataset | None,
    heldout: Dataset,
    work: Path,
    validate: Callable[[Path], ValidationResult],
    finalize: Callable[[Path], object],
    report_progress: Progress,
    failed: bool,
) -> _Blame:
    """Per-layer sensitivity of the Q/DQ graph and, with --auto and a `failed` validation, the
    fallback: `validate(path)` validates a graph as model.onnx was, `finalize(path)` applies the
    target's last changes in place.

    Runs on a Q/DQ graph quantized with `qc` (in Q/DQ format even where model.onnx is QOperator)."""
    from qconvert import fallback
    from qconvert.validation import sensitivity

    why_not = _sensitivity_unavailable(qc)
    if why_not is not None:
        return _Blame({"available": False, "reason": f"per-layer sensitivity is not available: {why_not}"})
    qdq = replace(qc, format="qdq")  # the user's --exclude/--include stay in force

    def quantize(exclude: tuple[str, ...], dest: Path) -> Path:
        excluded = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *exclude))
        return QUANTIZERS.get("static")(prepared, dest, excluded, calibration)

    def on_node(done: int, total: int) -> None:
        report_progress("sensitivity", "per-layer sensitivity (isolated quantizations)", done, total)

    report_progress("sensitivity", "per-layer sensitivity (SQNR against fp32)", None, None)
    sens_dir = work / "sensitivity"
    sens_dir.mkdir(exist_ok=True)
    sens = sensitivity.analyze(
        prepared,
        quantize((), sens_dir / "all-int8.onnx"),
        heldout,
        quantize,
        sens_dir,
        isolated=config.sensitivity_isolated,
        samples=config.sensitivity_samples,
        on_node=on_node,
    )
    blame = _Blame(sens.as_json())
    if not (config.auto and failed):
        return blame

    budget = fallback.default_budget(len(sens.layers)) if config.auto_budget is None else config.auto_budget

    def build(kept: tuple[str, ...], dest: Path) -> Path:
        excluded = quantize(kept, dest.with_name(dest.stem + "-excluded.onnx"))
        path = fallback.keep_float(excluded, dest, kept, prepared)
        finalize(path)
        return path

    def on_step(done: int, total: int) -> None:
        report_progress("fallback", "--auto: keeping sensitive nodes in float", done, total)

    report_progress("fallback", "--auto: keeping sensitive nodes in float", 0, None)
    result = fallback.search(sens.fallback_order(), budget, build, validate, work / "fallback", on_step)
    blame.fallback = result
    if result.passed:
        blame.qc = replace(qdq, nodes_to_exclude=(*qdq.nodes_to_exclude, *result.kept_float))
    return blame


def _fallback_json(
    config: RunConfig,
    blame: _Blame,
    all_int8_path: Path | None,
    model_path: Path,
    lat: dict[str, Any],
    notes: list[str],
) -> dict[str, Any] | None:
    """report.json's `fallback` entry (None without --auto); adds the notes that say what happened."""
    if not blame.sensitivity.get("available"):
        if not config.auto:
            return None  # the failure lines say it
        notes.append(blame.sensitivity["reason"] + "; --auto cannot keep layers in float either")
        return {"available": False, "reason": blame.sensitivity["reason"]}
    result = blame.fallback
    if result is None:
        return {"needed": False} if config.auto else None
    out: dict[str, Any] = {"available": True, "needed": True, **result.as_json()}
    if not result.passed:
        notes.append(f"--auto could not bring the model within tolerance: {result.reason}")
        return out
    assert all_int8_path is not None
    int8_bytes, model_bytes = onnx_size(all_int8_path), onnx_size(model_path)
    int8_ms, model_ms = lat["all_int8"].p50_ms, lat["model"].p50_ms
    out["size"] = {
        "all_int8_bytes": int8_bytes,
        "model_bytes": model_bytes,
        "ratio": model_bytes / int8_bytes,
    }
    out["latency"] = {
        "all_int8": lat["all_int8"].as_json(),
        "model": lat["model"].as_json(),
        "ratio_p50": model_ms / int8_ms,
    }
    kept = result.kept_float
    notes.append(
        f"--auto: {len(kept)} node(s) kept in float to meet the tolerance ({', '.join(kept)}); model.onnx is "
        f"that Q/DQ graph. Cost against the all-int8 graph: size {model_bytes / int8_bytes:.2f}x "
        f"({model_bytes - int8_bytes:+,} bytes), latency p50 {model_ms / int8_ms:.2f}x "
        f"({model_ms:.3f} ms vs {int8_ms:.3f} ms, measured interleaved)"
    )
    return out


def export(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the whole pipeline for `config` and write OUT_DIR. See DESIGN.md for the stages."""
    report_progress = progress or _no_progress
    start = time.perf_counter()
    target = TARGETS.get(config.target)
    mode = target.resolve_mode(config.bits, config.mode)
    tolerance = Tolerance.for_bits(config.bits, config.tolerance)
    opts = target.resolve_options(dict(config.target_options))
    candidates = target.quantize_candidates(config.bits, mode, config.calibration_method, opts)
    if config.bits == 4:  # --block-size / --algorithm
        size, algorithm = config.block_size, config.weight_algorithm
        candidates = [replace(c, block_size=size, weight_algorithm=algorithm) for c in candidates]
    qc = candidates[0]
    if (config.exclude and qc.mode not in SELECTABLE_MODES) or (
        config.include and qc.mode not in INCLUDE_MODES
    ):
        raise ConfigError(
            f"--exclude/--include do not apply to {qc.mode} mode here: --exclude works with "
            f"{', '.join(SELECTABLE_MODES)}, --include with {', '.join(INCLUDE_MODES)}."
        )
    if config.out_dir is not None:  # refuse early, before any expensive work
        check_output_dir(config.out_dir, config.force)

    with _stage("load", report_progress, "loading the model"):
        loaded = load_source(config.source, config.inputs, task=config.task)
    if loaded.token_outputs:  # a text model: embedding_cosine / next_token_agreement defaults too
        tolerance = Tolerance.for_bits(config.bits, config.tolerance, text=True)
    out_dir = config.out_dir or default_out_dir(loaded, target.name, config.bits, mode)
    inputs = _model_inputs(loaded)
    with _stage("data", report_progress, "checking calibration and validation data"):
        calibration, heldout, notes = _load_data(config, loaded, inputs, mode)
        notes[:0] = loaded.notes
    user_files = [*loaded.files, *(Path(p) for p in (config.calibration, config.data) if p)]

    with ArtifactDir(out_dir, force=config.force, inputs=user_files) as art:
        with _stage("export", report_progress, "exporting to ONNX"):
            exported = onnx_from_torch(loaded, config.opset, art.work)
        large = artifacts.needs_external_data(onnx_size(exported.path))
        candidates = [replace(c, external_data=large) for c in candidates]
        qc = candidates[0]
        fusion, fusions = _fusion(loaded, target.providers(inputs, opts)), None
        with _stage("prepare", report_progress, "shape inference and graph clean-up"):
            if fusion is None:
                prepared = prepared_from_onnx(exported.path, art.work / "prepared.onnx", external_data=large)
            else:
                fused = prepared_transformer(exported.path, art.work / "prepared.onnx", fusion, large)
                prepared, fusions = fused.path, {"model_type": fused.model_type, "fused": fused.fused}
                notes.append(fused.note)
        if config.exclude or config.include:
            nodes = node_infos(prepared)
            excluded = tuple(select(nodes, config.exclude, "--exclude"))
            included = tuple(select(nodes, config.include, "--include"))
            candidates = [
                replace(c, nodes_to_exclude=excluded, nodes_to_include=included) for c in candidates
            ]
            qc = candidates[0]
            notes.append(
                f"selectors: {len(excluded)} node(s) kept in float by --exclude"
                + (f", quantization limited to {len(included)} node(s) by --include" if included else "")
            )

        def on_batch(done: int, total: int) -> None:
            report_progress("calibrate", "calibrating", done, total)

        with _stage("quantize", report_progress, f"quantizing ({qc.mode}, {config.bits} bits)"):
            if len(candidates) == 1:
                model_path = QUANTIZERS.get(qc.mode)(
                    prepared, art.path("model.onnx"), qc, calibration, on_batch
                )
            else:
                qc, model_path, format_choice = _fastest(
                    candidates,
                    prepared,
                    art,
                    calibration,
                    heldout,
                    target.providers(inputs, opts),
                    config,
                    on_batch,
                )
                notes.append(
                    "format chosen by measurement here: "
                    + ", ".join(f"{f} {ms:.3f} ms" for f, ms in format_choice.items())
                    + f" (p50, batch {config.latency_batch}); kept {qc.format} (another format must be 5% "
                    "faster to replace qdq)"
                )
        if qc.format == "matmulnbits":  # how many MatMuls went to 4 bits
            notes.extend(int4_notes(model_path))
        elif qc.mode == "bf16":  # which ops stay fp32 for want of a bf16 kernel
            notes.extend(bf16_notes(model_path))
        lost = lost_dynamic_axes(exported.path, model_path) if loaded.kind == "huggingface" else []
        if lost:
            raise QuantizationError(f"quantizing fixed dynamic axes of the model: {'; '.join(lost)}")
        reference_path = art.copy_onnx(exported.path, "reference.onnx")
        finalized = target.finalize(model_path, inputs, opts)
        if finalized:
            notes.append(finalized)
        providers = target.providers_for(inputs, opts, qc)
        not_here = target.not_here(providers)
        with _stage("simulate", report_progress, "preparing what validation runs"):
            checked_path, stand_in_note = _stand_in(qc, model_path, prepared, art.work, calibration, not_here)
        if stand_in_note:
            notes.append(stand_in_note)

        with _stage("target", report_progress, f"checking the graph against the {target.name} rules"):
            float_nodes = _check_target(target, qc, model_path, providers)
        float_note = _float_nodes_note(float_nodes, providers[0].name)
        notes.extend(float_note)

        with _stage("validate", report_progress, f"validating on {len(heldout)} held-out samples"):
            # Where this machine cannot run the graph the way the target will, the graph's quantized
            # arithmetic is run exactly (Q/DQ as written), not through this CPU's integer kernels.
            native = not_here is None and checked_path == model_path
            candidate = make_session(checked_path, providers, optimize=native)
            fp32_out = make_session(reference_path).run(heldout)
            ref_out = _reference_outputs(loaded, heldout, fp32_out)
            names = candidate.output_names
            tokens = _token_outputs(loaded, heldout)
            validation = evaluate(names, ref_out, candidate.run(heldout), tolerance, heldout.labels, tokens)
            fidelity = evaluate(names, ref_out, fp32_out, Tolerance(()), heldout.labels, tokens)
            blame, all_int8_path = None, None
            if config.auto or not validation:  # per-layer blame, and with --auto the fallback

                def validate_graph(path: Path) -> ValidationResult:
                    run = make_session(path, providers, optimize=native).run(heldout)
                    return evaluate(names, ref_out, run, tolerance, heldout.labels, tokens)

                blame = _blame(
                    config,
                    qc,
                    prepared,
                    calibration,
                    heldout,
                    art.work,
                    validate_graph,
                    lambda path: target.finalize(path, inputs, opts),
                    report_progress,
                    failed=not validation,
                )
                if blame.qc is not None and blame.fallback is not None:  # the fallback passed: ship it
                    import onnx

                    all_int8_path = artifacts.save_onnx(
                        onnx.load(str(model_path)), art.work / "all-int8.onnx"
                    )
                    qc = blame.qc
                    model_path = checked_path = art.copy_onnx(blame.fallback.model, "model.onnx")
                    validation = blame.fallback.validation
                    float_nodes = _check_target(target, qc, model_path, providers)
                    notes[:] = [n for n in notes if n not in float_note]
                    notes.extend(_float_nodes_note(float_nodes, providers[0].name))
            on_cpu_kernels = None
            if not native:
                cpu_run = make_session(checked_path).run(heldout)
                on_cpu_kernels = evaluate(names, ref_out, cpu_run, Tolerance(()), heldout.labels, tokens)
            if not_here is not None:
                notes.append(
                    f"{not_here}: the verdict comes from the CPU provider with graph optimizations off, so the "
                    "graph's arithmetic runs as written. Latency on this machine says nothing about "
                    f"{target.name} speed."
                )
                if checked_path == model_path and on_cpu_kernels is not None:
                    notes.extend(_cpu_kernel_gap(validation, on_cpu_kernels))
            if len(heldout) < SMALL_HELDOUT:
                notes.append(
                    f"only {len(heldout)} held-out samples: one changed prediction moves top-1 agreement and "
                    f"accuracy by {100 / len(heldout):.1f} points; give more with --data for firmer figures"
                )

        with _stage("benchmark", report_progress, "measuring latency against fp32 (interleaved)"):
            batch = _latency_feed(heldout, config.latency_batch)
            fp32_bench = make_session(reference_path, providers)
            # a bf16 graph does not load without bf16 kernels: time its stand-in (the notes say that
            # latency here says nothing about the target's)
            unloadable = qc.mode == "bf16" and not_here is not None
            model_bench = make_session(checked_path if unloadable else model_path, providers)
            runners: dict[str, Callable[[], object]] = {
                "fp32": lambda: fp32_bench.inner.run(None, batch),
                "model": lambda: model_bench.inner.run(None, batch),
            }
            if all_int8_path is not None:  # what keeping nodes in float cost, measured alongside
                int8_bench = make_session(all_int8_path, providers)
                runners["all_int8"] = lambda: int8_bench.inner.run(None, batch)
            lat = interleaved_latency(runners, repeats=config.latency_repeats)
        sizes = {"fp32_bytes": onnx_size(reference_path), "model_bytes": onnx_size(model_path)}
        latency_ratio = lat["model"].p50_ms / lat["fp32"].p50_ms
        size_ratio = sizes["model_bytes"] / sizes["fp32_bytes"]
        if latency_ratio >= 1.0 and checked_path == model_path:
            notes.append(
                f"the quantized model is slower than fp32 on {model_bench.used} "
                f"({latency_ratio:.2f}x fp32 latency at batch {config.latency_batch}): here, quantization "
                "buys size, not speed"
            )
        if unloadable:
            notes.append(
                "bf16: model.onnx cannot run here, so the latency row times its fp32 stand-in on the CPU"
            )
        acc = validation.accuracy
        report: dict[str, Any] = {
            "passed": bool(validation),
            "target": target.name,
            "bits": config.bits,
            "mode": qc.mode,
            "validated_on": candidate.used,
            "validation_exact_qdq": not candidate.optimized,
            "validation": validation.as_json(),
            "on_cpu_kernels": None if on_cpu_kernels is None else on_cpu_kernels.as_json(),
            "export_fidelity": fidelity.as_json()["outputs"],
            "accuracy": None
            if acc is None
            else {
                "reference": acc["reference"],
                "fp32_onnx": fidelity.accuracy["candidate"] if fidelity.accuracy else None,
                "model": acc["candidate"],
                "drop": acc["drop"],
                "samples": len(heldout),
            },
            "size": {**sizes, "ratio": size_ratio},
            "latency": {
                "provider": model_bench.used,
                "batch": config.latency_batch,
                "fp32": lat["fp32"].as_json(),
                "model": lat["model"].as_json(),
                "ratio_p50": latency_ratio,
            },
            "data": _random_data(config),
            "fusions": fusions,
            "ops": {
                "fp32": _op_counts(reference_path),
                "model": _op_counts(model_path),
                "float_between_qdq": float_nodes,
            },
            "notes": notes,
        }
        if blame is not None:
            report["sensitivity"] = blame.sensitivity
            fallback_json = _fallback_json(config, blame, all_int8_path, model_path, lat, notes)
            if fallback_json is not None:
                report["fallback"] = fallback_json
        manifest: dict[str, Any] = {
            "qconvert": _versions()["qconvert"],
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": _command(config, out_dir),
            "source": {
                "origin": loaded.origin,
                "kind": loaded.kind,
                "files": [{"path": str(p), "sha256": sha256_file(p)} for p in loaded.files],
                "inputs": [asdict(i) for i in inputs],
                "outputs": list(loaded.output_names),
                "task": loaded.task,
                "token_outputs": loaded.token_outputs,
            },
            "settings": {**asdict(config), "out_dir": str(out_dir), "mode": mode},
            "quantization": {
                **asdict(qc),
                "forbidden_ops": sorted(qc.forbidden_ops),
                "keep_fp32_ops": sorted(qc.keep_fp32_ops),
            },
            "export": {
                "exporter": exported.exporter,
                "fallback_reason": exported.fallback_reason,
                "opset": exported.opset,
            },
            "target": {"name": target.name, "options": opts, "facts": target.facts()},
            "providers": [p.as_json() for p in providers],
            "provider_paths_relative_to": "this folder",
            "validated_on": {"provider": candidate.used, "exact_qdq": not candidate.optimized},
            "data": {
                "calibration": None
                if calibration is None
                else {"origin": calibration.origin, "samples": len(calibration)},
                "validation": {"origin": heldout.origin, "samples": len(heldout)},
            },
            "tolerance": [b.describe() for b in tolerance.bounds],
            "validation": {
                "passed": bool(validation),
                "failures": [c.describe() for c in validation.failures],
            },
            "versions": _versions(),
        }
        for companion in loaded.companion_files:  # config and tokenizer: OUT_DIR loads on its own
            art.copy_file(companion, companion.name)
        art.write_json("report.json", report)
        from qconvert.report_html import render_html

        art.write_text("report.html", render_html(report))
        manifest["files"] = art.hashes()
        art.write_json("qconvert.json", manifest)
        art.commit()
    return RunResult(out_dir, validation, manifest, report, time.perf_counter() - start)


# --- qconvert validate: an existing candidate against a reference, as a release gate ----------------
# (imports are local so that this section stays self-contained beside export())

MODEL_CHECKS = "model"  # the Check.output of whole-model checks (task_drop, speedup)


@dataclass(frozen=True)
class ValidationRun:
    """What `validate` measured: the tolerance checks (truthy when all pass) and their context."""

    validation: ValidationResult
    context: dict[str, Any]
    seconds: float

    @property
    def passed(self) -> bool:
        return bool(self.validation)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def notes(self) -> list[str]:
        return list(self.context.get("notes", []))

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
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
    from qconvert.errors import ConfigError

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

    if manifest is None:
        return None
    settings = manifest.get("settings", {})
    if settings.get(key):
        return Path(settings[key])
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
    from qconvert.errors import ConfigError, SourceError
    from qconvert.sources import _import_factory_module

    where, _, attr = spec.rpartition(":")
    if not where or not attr.isidentifier():
        raise ConfigError(
            f"--metric {spec}: is not file.py:fn or package.module:fn. Example: --metric metrics.py:f1"
        )
    try:
        module, _ = _import_factory_module(spec, where)
    except SourceError as e:
        raise ConfigError(f"--metric {str(e).removeprefix('SOURCE ')}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ConfigError(
            f"--metric {spec}: {where} has no callable {attr!r}. Callables there: {', '.join(found) or 'none'}."
        )
    return fn


def _task_score(
    fn: Callable[..., Any], spec: str, outputs: dict[str, np.ndarray], labels: np.ndarray | None, which: str
) -> float:
    import math

    from qconvert.errors import ConfigError

    try:
        value = fn(outputs, labels)
    except Exception as e:
        raise ConfigError(
            f"--metric {spec}: fn(outputs, labels) raised {type(e).__name__}: {e} (on the {which}'s outputs; "
            f"outputs: {', '.join(outputs)}; labels: {'none' if labels is None else len(labels)})."
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
    _check_same_inputs(candidate_inputs, _model_inputs(loaded), spec)
    if not loaded.is_torch:
        assert loaded.onnx_path is not None
        return loaded.origin, list(loaded.output_names), make_session(loaded.onnx_path).run(data), None
    try:
        outs = _reference_outputs(loaded, data, [])
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
    from qconvert.errors import ConfigError

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
    from qconvert.errors import ConfigError
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
    from qconvert.errors import ConfigError
    from qconvert.junit import render_junit
    from qconvert.runtime import CPU, available, manifest_providers
    from qconvert.validation import Check

    report_progress = progress or _no_progress
    start = time.perf_counter()
    notes: list[str] = []

    model_path, out_dir, manifest = _resolve_candidate(config.candidate)
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

    with _stage("load", report_progress, "reading the candidate and the data"):
        heldout = load_dataset(data_path, inputs, flag="--data", options=_artifact_tokenizer(config, out_dir))
        notes.extend(
            _calibration_notes(
                calib_path, bool(config.calibration_data), data_path, heldout, inputs, config.data_options
            )
        )
        metric_fn = _load_metric(config.metric) if config.metric else None

    with _stage("reference", report_progress, f"running the reference on {len(heldout)} samples"):
        reference, ref_names, ref_out, reference_onnx = _reference_run(ref_spec, inputs, heldout)
        ref_out, matched = _match_outputs(
            names, ref_names, ref_out, ref_spec, by_position=reference_onnx is None
        )
        notes.extend(matched)
    if reference_onnx is None and out_dir is not None and (out_dir / "reference.onnx").is_file():
        reference_onnx = out_dir / "reference.onnx"  # for timing only

    providers = manifest_providers(out_dir, manifest) if out_dir is not None and manifest else [CPU]
    providers = providers or [CPU]
    native = available(providers[0].name)
    quantization = (manifest or {}).get("quantization", {})
    with tempfile.TemporaryDirectory(prefix="qconvert-validate-") as work:
        checked = model_path
        if quantization.get("mode") == "fp16" and not native:
            checked = emulate_fp16(
                model_path, Path(work) / "fp16_emulated.onnx", quantization.get("external_data", False)
            )
            notes.append(
                "fp16: no fp16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
                "to fp16 where the fp16 graph produces it (overflow included)."
            )
        if quantization.get("mode") == "bf16" and not native:
            checked = emulate_bf16(
                model_path, Path(work) / "bf16_emulated.onnx", quantization.get("external_data", False)
            )
            notes.append(
                "bf16: no bf16 kernels here, so the figures are for an fp32 stand-in that rounds each tensor "
                "to bfloat16 where the bf16 graph produces it."
            )
        if quantization.get("calibration_table"):
            notes.append(
                "implicit int8: model.onnx is the fp32 graph plus a calibration table, and that is what was "
                "checked here; TensorRT quantizes it on the GPU. `qconvert export` measures an explicit Q/DQ "
                "stand-in with the same ranges."
            )
        with _stage("candidate", report_progress, f"running the candidate on {len(heldout)} samples"):
            candidate = make_session(checked, providers, optimize=native and checked == model_path)
            cand_out = candidate.run(heldout)
        collapse = None
        if probe_kwargs is not None:
            from qconvert.validation.collapse import probe_collapse

            with _stage("probe", report_progress, "collapse probe: held-out pairs, copy and count sequences"):
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
            f"{providers[0].name} is not installed here: the candidate ran on {candidate.used} with graph "
            "optimizations off, so the graph's arithmetic runs as written."
        )

    with _stage("validate", report_progress, "comparing outputs"):
        for name, r, c in zip(names, ref_out, cand_out, strict=True):
            if r.shape != c.shape:
                raise ConfigError(
                    f"--reference {ref_spec}: output {name!r} has shape {list(r.shape)} in the reference and "
                    f"{list(c.shape)} in the candidate. Give the reference the candidate was made from."
                )
        try:
            mask = heldout.feeds.get("attention_mask")
            tokens = TokenOutputs(mask, token_kinds) if token_kinds and mask is not None else None
            validation = evaluate(names, ref_out, cand_out, per_output, heldout.labels, tokens)
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
            extra.append(Check(MODEL_CHECKS, bound, task["drop"]))
        for bound in (b for b in model_bounds if b.metric == "collapse_rate"):
            assert collapse is not None  # _collapse_settings refused the bound without the probe
            extra.append(Check(MODEL_CHECKS, bound, collapse.rate))
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
        with _stage("benchmark", report_progress, "timing candidate and reference (interleaved)"):
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
    if len(heldout) < SMALL_HELDOUT:
        notes.append(
            f"only {len(heldout)} samples: one changed prediction moves top-1 agreement and accuracy by "
            f"{100 / len(heldout):.1f} points"
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
