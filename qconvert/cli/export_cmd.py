"""`qconvert export`: build a RunConfig, run the pipeline, draw the result."""

from __future__ import annotations

import time
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert import choices
from qconvert.cli import _help, _settings_file
from qconvert.cli._common import ProgressView, err, out, print_table, summary_line
from qconvert.cli.options import (
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
    TextPadding,
    data_options,
    parse_recover,
    parse_target_option,
)
from qconvert.config import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_LATENCY_BATCH,
    DEFAULT_OPSET,
    DEFAULT_TARGET,
    InputSpec,
    RunConfig,
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

if TYPE_CHECKING:
    from qconvert.pipeline import RunResult

# Choices come from the registries (qconvert.choices), so the help can never drift from what exists
# and a plugin's target or mode is offered like a built-in one.
TargetName = Enum("TargetName", {n: n for n in choices.targets()}, type=str)  # type: ignore[misc]
Bits = Enum("Bits", {f"b{b}": str(b) for b in choices.bits()}, type=str)  # type: ignore[misc]
Mode = Enum("Mode", {m: m for m in choices.modes()}, type=str)  # type: ignore[misc]
CalibrationMethod = Enum("CalibrationMethod", {m: m for m in choices.calibration_methods()}, type=str)  # type: ignore[misc]
Placement = Enum("Placement", {p: p for p in choices.placements()}, type=str)  # type: ignore[misc]
WeightAlgorithm = Enum("WeightAlgorithm", {a: a for a in choices.weight_algorithms()}, type=str)  # type: ignore[misc]


SOURCE_ARGUMENT = typer.Argument(
    None,
    help="file.py:factory, package.module:factory, .onnx, TorchScript or .pt2 file, or a Hugging Face "
    'model folder (has config.json; needs pip install "qconvert[hf]"). Omitted: the built-in digits CNN.',
)
CONFIG_FILE_OPTION = typer.Option(
    None,
    "--config",
    is_eager=True,
    callback=_settings_file.load,
    help="A TOML file whose [export] table holds these settings under the flags' names (target = "
    '"tensorrt", calibration-method = "entropy", target-option = ["format=qdq"]); flags given here win.',
)
BITS_OPTION = typer.Option("8", "--bits", help="Bit width.")
TARGET_OPTION = typer.Option(
    DEFAULT_TARGET, "--target", case_sensitive=False, help="Hardware target (any case: TensorRT)."
)
MODE_OPTION = typer.Option(None, "--mode", help="Quantization mode. Default: the target's for these bits.")
CALIBRATION_OPTION = typer.Option(
    None,
    "--calibration",
    help="Calibration DATA: .npz (keyed by input name), .npy, a folder of them, a folder of images "
    "(class subfolders give labels; see --image-size/--mean/--std/--layout), file.py:callable or "
    "package.module:callable yielding feed dicts, or 'random' (seeded noise, to try a model out: "
    "accuracy figures are then not meaningful).",
)
CALIBRATION_METHOD_OPTION = typer.Option(
    None,
    "--calibration-method",
    help="How activation ranges are chosen from the calibration data. Default: the model family's "
    "(mse for depthwise conv nets, minmax otherwise).",
)
PLACEMENT_OPTION = typer.Option(
    None,
    "--placement",
    help="Where static int8 puts its Q/DQ pairs: all (every op onnxruntime quantizes), compute (only "
    "Conv/ConvTranspose/Gemm/MatMul, inputs and outputs: integer kernels, elementwise ops float), inputs "
    "(only their inputs, outputs float: TensorRT's placement; slower on the CPU provider). Default: the "
    "model family's (compute on cpu, inputs on tensorrt/openvino for nets with hard-swish, swish or "
    "squeeze-excite; all otherwise).",
)
SAMPLES_OPTION = typer.Option(None, "--samples", min=1, help="Use the first N calibration samples.")
DATA_OPTION = typer.Option(
    None,
    "--data",
    help="Held-out validation DATA, in the same forms as --calibration except 'random'. Default: the "
    "built-in set, or 20% set aside from --calibration (with --calibration random: other random inputs).",
)
INPUTS_OPTION = typer.Option(
    [], "--input", help="NAME:SHAPE[:DTYPE], once per model input, e.g. x:1x3x32x32:float32."
)
OPSET_OPTION = typer.Option(DEFAULT_OPSET, "--opset", help="ONNX opset to export with.")
OUT_DIR_OPTION = typer.Option(
    None, "-o", "--out", help="Output folder. Default: qconvert-out/<model>-<target>-<format>."
)
TOLERANCE_OPTION = typer.Option(
    None, "--tolerance", help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Default: per bit width."
)
EXCLUDE_OPTION = typer.Option(
    [], "--exclude", help="Keep matching nodes in float: [name:|op:|module:]GLOB or re:REGEX. Repeatable."
)
INCLUDE_OPTION = typer.Option(
    [], "--include", help="Quantize only matching nodes (same syntax as --exclude). Repeatable."
)
LATENCY_BATCH_OPTION = typer.Option(
    DEFAULT_LATENCY_BATCH, "--latency-batch", min=1, help="Batch size the latency is measured at."
)
TARGET_OPTIONS_OPTION = typer.Option(
    [], "--target-option", help="NAME=VALUE, a target setting (see `qconvert targets`). Repeatable."
)
FORCE_OPTION = typer.Option(False, "--force", help="Replace an existing output folder.")
AUTO_OPTION = typer.Option(
    False,
    "--auto",
    help="If validation fails, first add accuracy-recovery steps (bias correction, GPTQ, MSE ranges, "
    "weight clipping, AdaRound; SmoothQuant for transformers; then mixed precision), then keep the most "
    "sensitive nodes in float (greedily, worst first) until the tolerance holds. Also ranks every "
    "quantized layer by SQNR in report.json.",
)
AUTO_SECONDS_OPTION = typer.Option(
    600.0,
    "--auto-seconds",
    min=0,
    help="With --auto: seconds the recovery attempts may take before layers are kept in float.",
)
AUTO_BUDGET_OPTION = typer.Option(
    None,
    "--auto-budget",
    min=0,
    help="With --auto: at most this many nodes kept in float. Default: 10 or 25% of the quantized "
    "nodes, whichever is smaller.",
)
BLOCK_SIZE_OPTION = typer.Option(
    DEFAULT_BLOCK_SIZE,
    "--block-size",
    help="--bits 4: input channels per 4-bit block, each with its own scale and zero point (a power "
    "of two, 16 or more).",
)
RECOVER_OPTION = typer.Option(
    [],
    "--recover",
    help=f"Accuracy-recovery step to run, by name ({_help.RECOVERY_STEPS}). Repeatable or "
    "comma-separated; they run in pipeline order (rewrites, rounding, bias correction). Default: the "
    "model family's (gptq and bias_correction, MSE ranges, the stem and logits in float for depthwise "
    "conv nets; smoothquant, and dynamic int8 on cpu, for transformers); 'none' runs none.",
)
ALGORITHM_OPTION = typer.Option(
    "rtn",
    "--algorithm",
    help="--bits 4: how weights are rounded: rtn (round to nearest), hqq (half-quadratic, no data), "
    "gptq (error-compensating, needs --calibration).",
)


def _bounds(config_file: Path | None, bits: str) -> str:
    """Where the run's bounds came from, for the table's caption."""
    return {
        "flag": "--tolerance",
        "config": f"--config {config_file}",
        "default": f"the defaults for --bits {bits}",
    }[_settings_file.source_of("tolerance")]


def export(
    source: str = SOURCE_ARGUMENT,
    config_file: Path | None = CONFIG_FILE_OPTION,
    bits: Bits = BITS_OPTION,
    target: TargetName = TARGET_OPTION,
    mode: Mode = MODE_OPTION,
    calibration: str = CALIBRATION_OPTION,
    calibration_method: CalibrationMethod = CALIBRATION_METHOD_OPTION,
    placement: Placement = PLACEMENT_OPTION,
    samples: int = SAMPLES_OPTION,
    data: str = DATA_OPTION,
    image_size: str = IMAGE_SIZE_OPTION,
    mean: str = MEAN_OPTION,
    std: str = STD_OPTION,
    layout: str = LAYOUT_OPTION,
    task: str = TASK_OPTION,
    tokenizer: str = TOKENIZER_OPTION,
    max_length: int = MAX_LENGTH_OPTION,
    padding: TextPadding = PADDING_OPTION,
    truncation: bool = TRUNCATION_OPTION,
    inputs: list[str] = INPUTS_OPTION,
    opset: int = OPSET_OPTION,
    out_dir: Path = OUT_DIR_OPTION,
    tolerance: str = TOLERANCE_OPTION,
    confidence: float = CONFIDENCE_OPTION,
    exclude: list[str] = EXCLUDE_OPTION,
    include: list[str] = INCLUDE_OPTION,
    latency_batch: int = LATENCY_BATCH_OPTION,
    target_options: list[str] = TARGET_OPTIONS_OPTION,
    force: bool = FORCE_OPTION,
    auto: bool = AUTO_OPTION,
    auto_seconds: float = AUTO_SECONDS_OPTION,
    auto_budget: int = AUTO_BUDGET_OPTION,
    block_size: int = BLOCK_SIZE_OPTION,
    recover: list[str] = RECOVER_OPTION,
    algorithm: WeightAlgorithm = ALGORITHM_OPTION,
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
        calibration_method=calibration_method.value if calibration_method else None,
        placement=placement.value if placement else None,
        samples=samples,
        data=data,
        data_options=data_options(image_size, mean, std, layout, tokenizer, max_length, padding, truncation),
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
    print_export(result, _bounds(config_file, bits.value))
    summary_line(result.verdict, started)
    return 0 if result.passed else 1


def print_export(result: RunResult, bounds: str) -> None:
    """The summary table, the sensitivity ranking, notes and failures, and where the artifacts are."""
    from qconvert.artifacts import sha256_file

    report = result.record
    table = Table(
        title=f"{result.manifest['source']['origin']} -> {report.target} ({report.mode})",
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
    for note in report.notes:
        err.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    for line in failure_lines(report):
        err.print(f"[red]out of tolerance:[/] {escape(line)}", soft_wrap=True)
    for line in inconclusive_lines(report):
        err.print(f"[yellow]inconclusive:[/] {escape(line)}", soft_wrap=True)
    out.print(f"artifacts: {escape(str(result.out_dir))}")
    out.print(
        f"qconvert.json sha256: {sha256_file(result.out_dir / 'qconvert.json')}", soft_wrap=True
    )  # pin or sign this


def _quiet_torch() -> None:
    """torch configures its own loggers on import; quieten them afterwards (unless --debug)."""
    import logging

    import torch  # noqa: F401  (imported for its logging set-up)

    from qconvert.cli._common import STATE

    if not STATE["debug"]:
        for name in ("torch", "torch.onnx", "onnxscript", "onnx_ir"):
            logging.getLogger(name).setLevel(logging.ERROR)
