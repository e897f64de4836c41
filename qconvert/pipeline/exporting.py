"""`qconvert export`: source -> export -> prepare -> quantize -> target -> validate -> artifacts."""

from __future__ import annotations

import functools
import logging
import platform
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

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
)
from qconvert.errors import (
    CalibrationError,
    ConfigError,
    QuantizationError,
    TargetError,
)
from qconvert.onnx_export import onnx_from_torch
from qconvert.pipeline._stages import (
    SMALL_HELDOUT,
    Progress,
    latency_feed,
    model_inputs,
    no_progress,
    reference_outputs,
    stage,
)
from qconvert.prepare import lost_dynamic_axes, prepared_from_onnx, prepared_transformer
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.bf16 import bf16_notes, emulate_bf16
from qconvert.quantize.float16 import emulate_fp16
from qconvert.quantize.int4 import int4_notes
from qconvert.quantize.selectors import node_infos, select
from qconvert.runtime import make_session
from qconvert.sources import LoadedModel, load_source
from qconvert.targets import TARGETS, Provider, Target
from qconvert.trust import check_data_vocab
from qconvert.validation import TokenOutputs, ValidationResult, evaluate

log = logging.getLogger(__name__)

FORMAT_MARGIN = 0.95  # a candidate format must be 5% faster than the default one to be kept
# providers that run onnxruntime's com.microsoft contrib ops (the transformer fusions' output)
CONTRIB_OP_PROVIDERS = ("CPUExecutionProvider", "CUDAExecutionProvider")
SELECTABLE_MODES = ("static", "dynamic", "fp16")  # modes whose quantizer honours --exclude
INCLUDE_MODES = ("static", "dynamic")  # modes whose quantizer honours --include


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


def default_out_dir(loaded: LoadedModel, target: str, bits: int, mode: str) -> Path:
    fmt = {16: "fp16", 8: "int8", 4: "int4"}[bits]
    if bits == 16 and mode in ("bf16", "static"):
        fmt = "bf16" if mode == "bf16" else "a16w8"
    suffix = "" if mode in ("static", "fp16", "bf16") else f"-{mode}"  # fp16/bf16 are already in `fmt`
    return DEFAULT_OUT_ROOT / f"{loaded.name}-{target}-{fmt}{suffix}"


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
    batch = latency_feed(heldout, config.latency_batch)
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
    report_progress = progress or no_progress
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

    with stage("load", report_progress, "loading the model"):
        loaded = load_source(config.source, config.inputs, task=config.task)
    if loaded.token_outputs:  # a text model: embedding_cosine / next_token_agreement defaults too
        tolerance = Tolerance.for_bits(config.bits, config.tolerance, text=True)
    out_dir = config.out_dir or default_out_dir(loaded, target.name, config.bits, mode)
    inputs = model_inputs(loaded)
    with stage("data", report_progress, "checking calibration and validation data"):
        calibration, heldout, notes = load_data(config, loaded, inputs, mode)
        notes[:0] = loaded.notes
    user_files = [*loaded.files, *(Path(p) for p in (config.calibration, config.data) if p)]

    with ArtifactDir(out_dir, force=config.force, inputs=user_files) as art:
        with stage("export", report_progress, "exporting to ONNX"):
            exported = onnx_from_torch(loaded, config.opset, art.work)
        check_data_vocab(exported.path, ("--data", heldout), ("--calibration", calibration))
        large = artifacts.needs_external_data(onnx_size(exported.path))
        candidates = [replace(c, external_data=large) for c in candidates]
        qc = candidates[0]
        fusion, fusions = _fusion(loaded, target.providers(inputs, opts)), None
        with stage("prepare", report_progress, "shape inference and graph clean-up"):
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

        with stage("quantize", report_progress, f"quantizing ({qc.mode}, {config.bits} bits)"):
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
        with stage("simulate", report_progress, "preparing what validation runs"):
            checked_path, stand_in_note = _stand_in(qc, model_path, prepared, art.work, calibration, not_here)
        if stand_in_note:
            notes.append(stand_in_note)

        with stage("target", report_progress, f"checking the graph against the {target.name} rules"):
            float_nodes = _check_target(target, qc, model_path, providers)
        float_note = _float_nodes_note(float_nodes, providers[0].name)
        notes.extend(float_note)

        with stage("validate", report_progress, f"validating on {len(heldout)} held-out samples"):
            # Where this machine cannot run the graph the way the target will, the graph's quantized
            # arithmetic is run exactly (Q/DQ as written), not through this CPU's integer kernels.
            native = not_here is None and checked_path == model_path
            candidate = make_session(checked_path, providers, optimize=native)
            fp32_out = make_session(reference_path).run(heldout)
            ref_out = reference_outputs(loaded, heldout, fp32_out)
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

        with stage("benchmark", report_progress, "measuring latency against fp32 (interleaved)"):
            batch = latency_feed(heldout, config.latency_batch)
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
            # the graph validation ran when it was not model.onnx: implicit (an explicit Q/DQ graph with
            # the table's ranges), fp16 or bf16 (an fp32 graph rounding to that type)
            "stand_in": None
            if checked_path == model_path
            else ("implicit" if qc.calibration_table else qc.mode),
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
