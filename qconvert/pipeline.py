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
from qconvert.calibrate import Dataset, ModelInput, load_dataset
from qconvert.config import DEFAULT_OUT_ROOT, HOLDOUT_FRACTION, QuantizeConfig, RunConfig, Tolerance
from qconvert.errors import CalibrationError, InternalError, QConvertError, TargetError
from qconvert.onnx_export import onnx_from_torch
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.quantize.float16 import emulate_fp16
from qconvert.runtime import make_session
from qconvert.sources import LoadedModel, load_source
from qconvert.targets import TARGETS, Provider, Target
from qconvert.validation import ValidationResult, evaluate

log = logging.getLogger(__name__)

FORMAT_MARGIN = 0.95  # a candidate format must be 5% faster than the default one to be kept
SMALL_HELDOUT = 100  # below this, say how coarse agreement and accuracy figures are

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
    suffix = "" if mode in ("static", "fp16") else f"-{mode}"  # fp16 is already in `fmt`
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
        load_dataset(calib_path, inputs, flag="--calibration", samples=config.samples) if calib_path else None
    )
    if data_path is not None:
        heldout = load_dataset(data_path, inputs, flag="--data")
        if calib_path and Path(calib_path).resolve() == Path(data_path).resolve():
            notes.append(
                "the validation data is the calibration data; figures will look better than they are"
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
    return (calibration if mode == "static" else None), heldout, notes


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
    batch = next(heldout.batches(config.latency_batch))
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
    if config.calibration_method != "minmax":
        parts += ["--calibration-method", config.calibration_method]
    for name, value in config.target_options:
        parts += ["--target-option", f"{name}={value}"]
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


def export(config: RunConfig, progress: Progress | None = None) -> RunResult:
    """Run the whole pipeline for `config` and write OUT_DIR. See DESIGN.md for the stages."""
    report_progress = progress or _no_progress
    start = time.perf_counter()
    target = TARGETS.get(config.target)
    mode = target.resolve_mode(config.bits, config.mode)
    tolerance = Tolerance.for_bits(config.bits, config.tolerance)
    opts = target.resolve_options(dict(config.target_options))
    candidates = target.quantize_candidates(config.bits, mode, config.calibration_method, opts)
    qc = candidates[0]
    if config.out_dir is not None:  # refuse early, before any expensive work
        check_output_dir(config.out_dir, config.force)

    with _stage("load", report_progress, "loading the model"):
        loaded = load_source(config.source, config.inputs)
    out_dir = config.out_dir or default_out_dir(loaded, target.name, config.bits, mode)
    inputs = _model_inputs(loaded)
    with _stage("data", report_progress, "checking calibration and validation data"):
        calibration, heldout, notes = _load_data(config, loaded, inputs, mode)
    user_files = [*loaded.files, *(Path(p) for p in (config.calibration, config.data) if p)]

    with ArtifactDir(out_dir, force=config.force, inputs=user_files) as art:
        with _stage("export", report_progress, "exporting to ONNX"):
            exported = onnx_from_torch(loaded, config.opset, art.work)
        large = artifacts.needs_external_data(onnx_size(exported.path))
        candidates = [replace(c, external_data=large) for c in candidates]
        qc = candidates[0]
        with _stage("prepare", report_progress, "shape inference and graph clean-up"):
            prepared = prepared_from_onnx(exported.path, art.work / "prepared.onnx", external_data=large)

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
        reference_path = art.copy_onnx(exported.path, "reference.onnx")
        finalized = target.finalize(model_path, inputs, opts)
        if finalized:
            notes.append(finalized)
        providers = target.providers(inputs, opts)
        not_here = target.not_here(providers)
        with _stage("simulate", report_progress, "preparing what validation runs"):
            checked_path, stand_in_note = _stand_in(qc, model_path, prepared, art.work, calibration, not_here)
        if stand_in_note:
            notes.append(stand_in_note)

        with _stage("target", report_progress, f"checking the graph against the {target.name} rules"):
            float_nodes = _check_target(target, qc, model_path, providers)
        if float_nodes:
            notes.append(
                f"{len(float_nodes)} node(s) sit between Q/DQ pairs but are not among the ops "
                f"{providers[0].name} runs in int8, so they run in float with a dequantize/quantize round "
                f"trip: {', '.join(float_nodes[:8])}{' ...' if len(float_nodes) > 8 else ''}"
            )

        with _stage("validate", report_progress, f"validating on {len(heldout)} held-out samples"):
            # Where this machine cannot run the graph the way the target will, the graph's quantized
            # arithmetic is run exactly (Q/DQ as written), not through this CPU's integer kernels.
            native = not_here is None and checked_path == model_path
            candidate = make_session(checked_path, providers, optimize=native)
            fp32_out = make_session(reference_path).run(heldout)
            ref_out = _reference_outputs(loaded, heldout, fp32_out)
            names = candidate.output_names
            validation = evaluate(names, ref_out, candidate.run(heldout), tolerance, heldout.labels)
            fidelity = evaluate(names, ref_out, fp32_out, Tolerance(()), heldout.labels)
            on_cpu_kernels = None
            if not native:
                cpu_run = make_session(checked_path).run(heldout)
                on_cpu_kernels = evaluate(names, ref_out, cpu_run, Tolerance(()), heldout.labels)
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
            batch = next(heldout.subset(slice(0, config.latency_batch)).batches(config.latency_batch))
            fp32_bench = make_session(reference_path, providers)
            model_bench = make_session(model_path, providers)
            lat = interleaved_latency(
                {
                    "fp32": lambda: fp32_bench.inner.run(None, batch),
                    "model": lambda: model_bench.inner.run(None, batch),
                },
                repeats=config.latency_repeats,
            )
        sizes = {"fp32_bytes": onnx_size(reference_path), "model_bytes": onnx_size(model_path)}
        latency_ratio = lat["model"].p50_ms / lat["fp32"].p50_ms
        size_ratio = sizes["model_bytes"] / sizes["fp32_bytes"]
        if latency_ratio >= 1.0 and checked_path == model_path:
            notes.append(
                f"the quantized model is slower than fp32 on {model_bench.used} "
                f"({latency_ratio:.2f}x fp32 latency at batch {config.latency_batch}): here, quantization "
                "buys size, not speed"
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
            "ops": {
                "fp32": _op_counts(reference_path),
                "model": _op_counts(model_path),
                "float_between_qdq": float_nodes,
            },
            "notes": notes,
        }
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
        art.write_json("report.json", report)
        manifest["files"] = art.hashes()
        art.write_json("qconvert.json", manifest)
        art.commit()
    return RunResult(out_dir, validation, manifest, report, time.perf_counter() - start)
