"""Time of percentile and entropy calibration against minmax, interleaved in one process.

    python benchmarks/bench_calibration_speed.py [--calibration /work/photos/calibration.npz]
        [--samples 100] [--rounds 5] [--model prepared.onnx] [--json out.json]

The model is EfficientNet-Lite1 with its real ImageNet weights (benchmarks/efficientnet_lite.py),
exported and prepared as `qconvert export` does (or --model, a prepared ONNX with one input); the
data is the first --samples of --calibration (an .npz keyed by the input name). Each round runs
`calibrate_streaming` once per method, minmax / percentile / entropy in turn, on the op types
`quantize_static` calibrates, so a change in the machine's load hits all three alike; the ratios are
of the medians over rounds (each against minmax measured the same way), the spread the lowest and
highest per-round ratio. Each method runs twice a round: measuring every tensor (the calibrator
before the inputs of quantized Clip/Relu nodes were skipped) and as `quantize_static_int8` runs it,
without the tensors whose range onnxruntime's quantizer replaces (`replaced_ranges`). Wall time and CPU
time (user + system of this process, onnxruntime's threads included) are both shown: onnxruntime
runs the model on every core, while the histograms are counted on one, so the wall-time ratio
grows as the machine gets quieter. The 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("minmax", "percentile", "entropy")
SOURCE = f"{ROOT / 'benchmarks' / 'efficientnet_lite.py'}:build"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _export(work: Path) -> Path:
    from qconvert.config import DEFAULT_OPSET
    from qconvert.onnx_export import onnx_from_torch
    from qconvert.prepare import prepared_from_onnx
    from qconvert.sources import load_source

    exported = onnx_from_torch(load_source(SOURCE), DEFAULT_OPSET, work)
    return prepared_from_onnx(exported.path, work / "prepared.onnx")


VARIANTS = ("every tensor", "as quantize_static_int8")


def measure(model: Path, feeds: dict[str, np.ndarray], rounds: int) -> dict[str, dict[str, list[float]]]:
    import onnx

    from qconvert.calibrate import Dataset
    from qconvert.calibrate.streaming import CalibrationSettings, calibrate_streaming, replaced_ranges
    from qconvert.quantize.static import static_op_types

    data = Dataset("bench", feeds)
    ops = static_op_types()
    replaced = {"every tensor": (), "as quantize_static_int8": replaced_ranges(onnx.load(str(model)), ops)}
    runs = [(v, m) for v in VARIANTS for m in METHODS]
    times: dict[str, dict[str, list[float]]] = {f"{v}|{m}": {"wall": [], "cpu": []} for v, m in runs}
    for r in range(rounds):
        for variant, method in runs:
            settings = CalibrationSettings(method=method, op_types=ops, replaced=replaced[variant])
            wall, cpu = time.perf_counter(), _cpu_seconds()
            calibrate_streaming(model, data, settings)
            times[f"{variant}|{method}"]["wall"].append(time.perf_counter() - wall)
            times[f"{variant}|{method}"]["cpu"].append(_cpu_seconds() - cpu)
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {t['wall'][-1]:.2f} s" for k, t in times.items()), flush=True
        )
    return times


def summary(times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in times:
        variant = key.split("|")[0]
        row: dict[str, Any] = {}
        for kind in ("wall", "cpu"):
            mine, base = np.array(times[key][kind]), np.array(times[f"{variant}|minmax"][kind])
            per_round = mine / base
            row[kind] = {
                "median_s": float(np.median(mine)),
                "ratio": float(np.median(mine) / np.median(base)),
                "spread": [float(per_round.min()), float(per_round.max())],
            }
        out[key] = row
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calibration", type=Path, default=Path("/work/photos/calibration.npz"))
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--model", type=Path, help="a prepared ONNX model (default: EfficientNet-Lite1)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-calib-speed-") as tmp:
        model = args.model or _export(Path(tmp))
        with np.load(args.calibration) as npz:
            feeds = {k: np.ascontiguousarray(npz[k][: args.samples]) for k in npz.files if k != "labels"}
        load_before = os.getloadavg()[0]
        times = measure(model, feeds, args.rounds)
        load_after = os.getloadavg()[0]
    result = {"samples": args.samples, "rounds": args.rounds, "load": [load_before, load_after]}
    result["methods"] = summary(times)
    print(f"load average (1 min) {load_before:.2f} before, {load_after:.2f} after; {os.cpu_count()} cores")
    print(
        "| calibrator, method | wall median | wall x minmax (spread) | CPU median | CPU x minmax (spread) |"
    )
    print("|---|---|---|---|---|")
    for key, row in result["methods"].items():
        w, c = row["wall"], row["cpu"]
        print(
            f"| {key.replace('|', ', ')} | {w['median_s']:.2f} s | {w['ratio']:.2f}x ({w['spread'][0]:.2f}-{w['spread'][1]:.2f}) "
            f"| {c['median_s']:.2f} s | {c['ratio']:.2f}x ({c['spread'][0]:.2f}-{c['spread'][1]:.2f}) |"
        )
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
