"""`qconvert export`: its options, then build the ExportSettings, run the pipeline, draw the result."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from qconvert import choices
from qconvert.cli import _help, _settings_file
from qconvert.cli._common import ProgressView, out, print_table, print_verdict_lines, summary_line
from qconvert.cli.options import (
    CONFIDENCE,
    FORCE_OUT_DIR,
    IMAGE_OPTIONS,
    LATENCY_BATCH,
    OPSET,
    SAMPLES,
    TARGET,
    TARGET_OPTIONS,
    TASK,
    TEXT_OPTIONS,
    CalibrationMethod,
    Opt,
    choice,
    command,
)
from qconvert.report import (
    level_text,
    quantized_label,
    random_data_warning,
    sensitivity_rows,
    summary_rows,
)
from qconvert.settings import DEFAULT_AUTO_SECONDS, DEFAULT_BLOCK_SIZE, ExportSettings

if TYPE_CHECKING:
    from qconvert.pipeline import RunResult

Bits = choice("Bits", choices.bits())
Mode = choice("Mode", choices.modes())
Placement = choice("Placement", choices.placements())
WeightAlgorithm = choice("WeightAlgorithm", choices.weight_algorithms())

# In help order. Each sets the ExportSettings field it names (qconvert.settings: its Flag parses the
# value and prints it back into the manifest's command); --config sets none.
OPTIONS = (
    Opt(
        "source",
        str,
        typer.Argument(
            None,
            help="file.py:factory, package.module:factory, .onnx, TorchScript or .pt2 file, or a Hugging Face "
            'model folder (has config.json; needs pip install "qconvert[hf]"). Omitted: the built-in digits CNN.',
        ),
    ),
    Opt(
        None,
        Path,
        typer.Option(
            None,
            "--config",
            is_eager=True,
            callback=_settings_file.load,
            help="A TOML file whose [export] table holds these settings under the flags' names (target = "
            '"tensorrt", calibration-method = "entropy", target-option = ["format=qdq"]); flags given here win.',
        ),
        param="config_file",
    ),
    Opt("bits", Bits, typer.Option("8", "--bits", help="Bit width.")),
    TARGET,
    Opt(
        "mode",
        Mode,
        typer.Option(None, "--mode", help="Quantization mode. Default: the target's for these bits."),
    ),
    Opt(
        "calibration",
        str,
        typer.Option(
            None,
            "--calibration",
            help="Calibration DATA: .npz (keyed by input name), .npy, a folder of them, a folder of images "
            "(class subfolders give labels; see --image-size/--mean/--std/--layout), file.py:callable or "
            "package.module:callable yielding feed dicts, or 'random' (seeded noise, to try a model out: "
            "accuracy figures are then not meaningful).",
        ),
    ),
    Opt(
        "calibration_method",
        CalibrationMethod,
        typer.Option(
            None,
            "--calibration-method",
            help="How activation ranges are chosen from the calibration data. Default: the model family's "
            "(mse for depthwise conv nets, minmax otherwise).",
        ),
    ),
    Opt(
        "placement",
        Placement,
        typer.Option(
            None,
            "--placement",
            help="Where static int8 puts its Q/DQ pairs: all (every op onnxruntime quantizes), compute (only "
            "Conv/ConvTranspose/Gemm/MatMul, inputs and outputs: integer kernels, elementwise ops float), "
            "inputs (only their inputs, outputs float: TensorRT's placement; slower on the CPU provider). "
            "Default: the model family's (compute on cpu, inputs on tensorrt/openvino for nets with "
            "hard-swish, swish or squeeze-excite; all otherwise).",
        ),
    ),
    SAMPLES,
    Opt(
        "data",
        str,
        typer.Option(
            None,
            "--data",
            help="Held-out validation DATA, in the same forms as --calibration except 'random'. Default: the "
            "built-in set, or 20% set aside from --calibration (with --calibration random: other random inputs).",
        ),
    ),
    *IMAGE_OPTIONS,
    TASK,
    *TEXT_OPTIONS,
    Opt(
        "inputs",
        list[str],
        typer.Option(
            [], "--input", help="NAME:SHAPE[:DTYPE], once per model input, e.g. x:1x3x32x32:float32."
        ),
    ),
    OPSET,
    Opt(
        "out_dir",
        Path,
        typer.Option(
            None, "-o", "--out", help="Output folder. Default: qconvert-out/<model>-<target>-<format>."
        ),
    ),
    Opt(
        "tolerance",
        str,
        typer.Option(
            None,
            "--tolerance",
            help="e.g. 'top1_agreement>=0.99,logits:max_abs<=0.5'. Default: per bit width.",
        ),
    ),
    CONFIDENCE,
    Opt(
        "exclude",
        list[str],
        typer.Option(
            [],
            "--exclude",
            help="Keep matching nodes in float: [name:|op:|module:]GLOB or re:REGEX. Repeatable.",
        ),
    ),
    Opt(
        "include",
        list[str],
        typer.Option(
            [], "--include", help="Quantize only matching nodes (same syntax as --exclude). Repeatable."
        ),
    ),
    LATENCY_BATCH,
    TARGET_OPTIONS,
    FORCE_OUT_DIR,
    Opt(
        "auto",
        bool,
        typer.Option(
            False,
            "--auto",
            help="If validation fails, first add accuracy-recovery steps (bias correction, GPTQ, MSE ranges, "
            "weight clipping, AdaRound; SmoothQuant for transformers; then mixed precision), then keep the "
            "most sensitive nodes in float (greedily, worst first) until the tolerance holds. Also ranks "
            "every quantized layer by SQNR in report.json.",
        ),
    ),
    Opt(
        "auto_seconds",
        float,
        typer.Option(
            DEFAULT_AUTO_SECONDS,
            "--auto-seconds",
            min=0,
            help="With --auto: seconds the recovery attempts may take before layers are kept in float.",
        ),
    ),
    Opt(
        "auto_budget",
        int,
        typer.Option(
            None,
            "--auto-budget",
            min=0,
            help="With --auto: at most this many nodes kept in float. Default: 10 or 25% of the quantized "
            "nodes, whichever is smaller.",
        ),
    ),
    Opt(
        "block_size",
        int,
        typer.Option(
            DEFAULT_BLOCK_SIZE,
            "--block-size",
            help="--bits 4: input channels per 4-bit block, each with its own scale and zero point (a power "
            "of two, 16 or more).",
        ),
    ),
    Opt(
        "recover",
        list[str],
        typer.Option(
            [],
            "--recover",
            help=f"Accuracy-recovery step to run, by name ({_help.RECOVERY_STEPS}). Repeatable or "
            "comma-separated; they run in pipeline order (rewrites, rounding, bias correction). Default: the "
            "model family's (gptq and bias_correction, MSE ranges, the stem and logits in float for depthwise "
            "conv nets; smoothquant, and dynamic int8 on cpu, for transformers); 'none' runs none.",
        ),
    ),
    Opt(
        "weight_algorithm",
        WeightAlgorithm,
        typer.Option(
            "rtn",
            "--algorithm",
            help="--bits 4: how weights are rounded: rtn (round to nearest), hqq (half-quadratic, no data), "
            "gptq (error-compensating, needs --calibration).",
        ),
    ),
)


def _bounds(config_file: Path | None, bits: int) -> str:
    """Where the run's bounds came from, for the table's caption."""
    return {
        "flag": "--tolerance",
        "config": f"--config {config_file}",
        "default": f"the defaults for --bits {bits}",
    }[_settings_file.source_of("tolerance")]


def run_export(settings: ExportSettings, extras: dict[str, Any]) -> int:
    """Run the pipeline on the settings the options built, and draw the result."""
    from qconvert.pipeline import export as export_pipeline

    _quiet_torch()
    started = time.perf_counter()
    with ProgressView() as progress:
        result = export_pipeline(settings, progress=progress)
    print_export(result, _bounds(extras["config_file"], settings.bits))
    summary_line(result.verdict, started)
    return 0 if result.passed else 1


export = command(
    ExportSettings,
    OPTIONS,
    run_export,
    "Export, quantize for a target, validate against the original, and write OUT_DIR.",
)


def print_export(result: RunResult, bounds: str) -> None:
    """The summary table, the sensitivity ranking, notes and failures, and where the artifacts are."""
    from qconvert.artifacts import sha256_file

    report = result.record
    table = Table(
        title=f"{result.manifest_record.source.origin} -> {report.target} ({report.mode})",
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
    print_verdict_lines(report)
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
