"""`qconvert export`: build a RunConfig, run the pipeline, draw the result."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert.cli import _settings_file
from qconvert.cli._common import (
    CONFIDENCE_OPTION,
    IMAGE_SIZE_OPTION,
    LAYOUT_OPTION,
    MAX_LENGTH_OPTION,
    MEAN_OPTION,
    PADDING_OPTION,
    STD_OPTION,
    TASK_OPTION,
    TOKENIZER_OPTION,
    TRUNCATION_OPTION,
    ProgressView,
    TextPadding,
    err,
    out,
    print_table,
    summary_line,
)
from qconvert.config import (
    CALIBRATION_METHODS,
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LATENCY_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TARGET,
    MODES,
    WEIGHT_ALGORITHMS,
    InputSpec,
    RunConfig,
    image_options,
    parse_recover,
    parse_target_option,
    text_options,
)
from qconvert.report import (
    failure_lines,
    inconclusive_lines,
    level_text,
    quantized_label,
    random_data_warning,
    sensitivity_rows,
    summary_rows,
)
from qconvert.targets import TARGETS

# Choices come from the registries, so the help can never drift from what exists.
TargetName = Enum("TargetName", {n: n for n in TARGETS.names()}, type=str)  # type: ignore[misc]
Bits = Enum("Bits", {f"b{b}": str(b) for b in (16, 8, 4)}, type=str)  # type: ignore[misc]
Mode = Enum("Mode", {m: m for m in MODES}, type=str)  # type: ignore[misc]
CalibrationMethod = Enum("CalibrationMethod", {m: m for m in CALIBRATION_METHODS}, type=str)  # type: ignore[misc]
WeightAlgorithm = Enum("WeightAlgorithm", {a: a for a in WEIGHT_ALGORITHMS}, type=str)  # type: ignore[misc]


def export(
    source: str = typer.Argument(
        None,
        help="file.py:factory, package.module:factory, .onnx, TorchScript or .pt2 file, or a Hugging Face "
        'model folder (has config.json; needs pip install "qconvert[hf]"). Omitted: the built-in digits CNN.',
    ),
    config_file: Path | None = typer.Option(
        None,
        "--config",
        is_eager=True,
        callback=_settings_file.load,
        help="A TOML file whose [export] table holds these settings under the flags' names (target = "
        '"tensorrt", calibration-method = "entropy", target-option = ["format=qdq"]); flags given here win.',
    ),
    bits: Bits = typer.Option("8", "--bits", help="Bit width."),
    target: TargetName = typer.Option(
        DEFAULT_TARGET, "--target", case_sensitive=False, help="Hardware target (any case: TensorRT)."
    ),
    mode: Mode = typer.Option(
        None, "--mode", help="Quantization mode. Default: the target's for these bits."
    ),
    calibration: str = typer.Option(
        None,
        "--calibration",
        help="Calibration DATA: .npz (keyed by input name), .npy, a folder of them, a folder of images "
        "(class subfolders give labels; see --image-size/--mean/--std/--layout), file.py:callable or "
        "package.module:callable yielding feed dicts, or 'random' (seeded noise, to try a model out: "
        "accuracy figures are then not meaningful).",
    ),
    calibration_method: CalibrationMethod = typer.Option("minmax", "--calibration-method"),
    samples: int = typer.Option(None, "--samples", min=1, help="Use the first N calibration samples."),
    data: str = typer.Option(
        None,
        "--data",
        help="Held-out validation DATA, in the same forms as --calibration except 'random'. Default: the "
        "built-in set, or 20% set aside from --calibration (with --calibration random: other random inputs).",
    ),
    image_size: str = IMAGE_SIZE_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    layout: str = LAYOUT_OPTION,
    task: str = TASK_OPTION,
    tokenizer: str = TOKENIZER_OPTION,
    max_length: int = MAX_LENGTH_OPTION,
    padding: TextPadding = PADDING_OPTION,
    truncation: bool = TRUNCATION_OPTION,
    inputs: list[str] = typer.Option(
        [], "--input", help="NAME:SHAPE[:DTYPE], once per model input, e.g. x:1x3x32x32:float32."
    ),
    opset: int = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset to export with."),
    out_dir: Path = typer.Option(
        None, "-o", "--out", help="Output folder. Default: qconvert-out/<model>-<target>-<format>."
    ),
    tolerance: str = typer.Option(
        None, "--tolerance", help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Default: per bit width."
    ),
    confidence: float = CONFIDENCE_OPTION,
    exclude: list[str] = typer.Option(
        [], "--exclude", help="Keep matching nodes in float: [name:|op:|module:]GLOB or re:REGEX. Repeatable."
    ),
    include: list[str] = typer.Option(
        [], "--include", help="Quantize only matching nodes (same syntax as --exclude). Repeatable."
    ),
    latency_batch: int = typer.Option(
        DEFAULT_LATENCY_BATCH, "--latency-batch", min=1, help="Batch size the latency is measured at."
    ),
    target_options: list[str] = typer.Option(
        [], "--target-option", help="NAME=VALUE, a target setting (see `qconvert targets`). Repeatable."
    ),
    force: bool = typer.Option(False, "--force", help="Replace an existing output folder."),
    auto: bool = typer.Option(
        False,
        "--auto",
        help="If validation fails, first add accuracy-recovery steps (bias correction, weight clipping, "
        "MSE ranges, AdaRound; SmoothQuant for transformers), then keep the most sensitive nodes in "
        "float (greedily, worst first) until the tolerance holds. Also ranks every quantized layer by "
        "SQNR in report.json.",
    ),
    auto_seconds: float = typer.Option(
        600.0,
        "--auto-seconds",
        min=0,
        help="With --auto: seconds the recovery attempts may take before layers are kept in float.",
    ),
    auto_budget: int = typer.Option(
        None,
        "--auto-budget",
        min=0,
        help="With --auto: at most this many nodes kept in float. Default: 10 or 25% of the quantized "
        "nodes, whichever is smaller.",
    ),
    block_size: int = typer.Option(
        DEFAULT_BLOCK_SIZE,
        "--block-size",
        help="--bits 4: input channels per 4-bit block, each with its own scale and zero point (a power "
        "of two, 16 or more).",
    ),
    recover: list[str] = typer.Option(
        [],
        "--recover",
        help="Accuracy-recovery step to run, by name (equalize, bias_correction, clip_weights, "
        "adaround, smoothquant). Repeatable or comma-separated; they run in the order given. Default: "
        "the model family's (bias_correction and a float stem for depthwise conv nets; smoothquant, and "
        "dynamic int8 on cpu, for transformers); 'none' runs none.",
    ),
    algorithm: WeightAlgorithm = typer.Option(
        "rtn",
        "--algorithm",
        help="--bits 4: how weights are rounded: rtn (round to nearest), hqq (half-quadratic, no data), "
        "gptq (error-compensating, needs --calibration).",
    ),
) -> int:
    """Export, quantize for a target, validate against the original, and write OUT_DIR."""
    from qconvert.pipeline import export as run_export

    _quiet_torch()

    started = time.perf_counter()
    config = RunConfig(
        source=source,
        bits=int(bits.value),
        target=target.value,
        mode=mode.value if mode else None,
        calibration=calibration,
        calibration_method=calibration_method.value,
        samples=samples,
        data=data,
        data_options=text_options(
            tokenizer,
            max_length,
            padding.value,
            truncation,
            base=image_options(image_size, mean, std, layout),
        ),
        task=task,
        inputs=tuple(InputSpec.parse(s) for s in inputs),
        opset=opset,
        out_dir=out_dir,
        tolerance=tolerance,
        confidence=confidence,
        latency_batch=latency_batch,
        exclude=tuple(exclude),
        include=tuple(include),
        target_options=tuple(parse_target_option(t) for t in target_options),
        force=force,
        auto=auto,
        auto_budget=auto_budget,
        auto_seconds=auto_seconds,
        block_size=block_size,
        weight_algorithm=algorithm.value,
        recover=parse_recover(recover),
    )
    with ProgressView() as progress:
        result = run_export(config, progress=progress)
    report = result.report
    bounds = {
        "flag": "--tolerance",
        "config": f"--config {config_file}",
        "default": f"the defaults for --bits {bits.value}",
    }[_settings_file.source_of("tolerance")]
    table = Table(
        title=f"{result.manifest['source']['origin']} -> {report['target']} ({report['mode']})",
        caption=f"bounds: {bounds}; below each figure its {level_text(report)} confidence interval, which "
        "the verdict reads (<=X% worse: the share of inputs that may be worse than the worst seen)",
    )
    table.add_column("")
    table.add_column("fp32", justify="right")
    table.add_column(quantized_label(report), justify="right")
    table.add_column("change", justify="right")
    for row in summary_rows(report):
        table.add_row(*(Text(cell) for cell in row))
    print_table(table)
    random_warning = random_data_warning(report)
    if random_warning:
        out.print(f"[bold]{escape(random_warning)}[/]", soft_wrap=True)
    ranking = sensitivity_rows(report)
    if ranking:
        sens = Table(title="per-layer sensitivity, worst first (SQNR against fp32)")
        for name in ("#", "node", "op", "cumulative", "isolated", "isolated, at outputs"):
            sens.add_column(name, justify="left" if name in ("node", "op") else "right")
        for layer in ranking:
            sens.add_row(*(Text(cell) for cell in layer))
        print_table(sens)
    for note in report["notes"]:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for line in failure_lines(report):
        err.print(f"[red]out of tolerance:[/] {escape(line)}", soft_wrap=True)
    for line in inconclusive_lines(report):
        err.print(f"[yellow]inconclusive:[/] {escape(line)}", soft_wrap=True)
    out.print(f"artifacts: {escape(str(result.out_dir))}")
    from qconvert.artifacts import sha256_file

    out.print(
        f"qconvert.json sha256: {sha256_file(result.out_dir / 'qconvert.json')}", soft_wrap=True
    )  # pin or sign this
    summary_line(result.verdict, started)
    return 0 if result.passed else 1


def _quiet_torch() -> None:
    """torch configures its own loggers on import; quieten them afterwards (unless --debug)."""
    import logging

    import torch  # noqa: F401  (imported for its logging set-up)

    from qconvert.cli._common import STATE

    if not STATE["debug"]:
        for name in ("torch", "torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
