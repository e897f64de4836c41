"""Time of percentile and entropy calibration against minmax, interleaved in one process.

    python benchmarks/bench_calibration_speed.py [--calibration /work/photos/calibration.npz]
        [--samples 100] [--rounds 5] [--model prepared.onnx] [--before streaming.py] [--json out.json]

The model is EfficientNet-Lite1 with its real ImageNet weights (benchmarks/efficientnet_lite.py),
exported and prepared as `qconvert export` does (or --model, a prepared ONNX with one input); the
data is the first --samples of --calibration (an .npz keyed by the input name). Each round runs
minmax / percentile / entropy in turn, on the op types and with the tensors `quantize_static_int8`
calibrates (`replaced_ranges` left out), so a change in the machine's load hits all three alike;
the ratios are of the medians over rounds (each against minmax measured the same way), the spread
the lowest and highest per-round ratio. Each method runs in every variant each round:

- "as qconvert runs it": `calibrate_streaming`, each batch's histograms counted by one thread per
  core once the batch has run;
- "folded on one thread": the same calibrator counting on the calling thread
  (`StreamingCalibrator.add_batch` without a pool), so the difference is what the threads buy;
- with --before FILE (a streaming.py of another revision, e.g. `git show
  main:qconvert/calibrate/streaming.py > /tmp/before.py`): that revision's `calibrate_streaming`;
  its ranges are also compared with this tree's.

Wall time and CPU time (user + system of this process, onnxruntime's threads included) are both
shown. On a machine busy with other work the wall-time ratio tends to the CPU-time ratio (every
thread waits for a core); on an idle one the counting threads use the cores a single thread leaves
idle.
The 1-minute load average is printed before and after.
"""

from __future__ import annotations

import argparse
import importlib.util
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
    from qconvert.onnx_export import onnx_from_torch
    from qconvert.prepare import prepared_from_onnx
    from qconvert.settings import DEFAULT_OPSET
    from qconvert.sources import load_source

    exported = onnx_from_torch(load_source(SOURCE), DEFAULT_OPSET, work)
    return prepared_from_onnx(exported.path, work / "prepared.onnx")


VARIANTS = ("as qconvert runs it", "folded on one thread")


def _one_thread(model: Path, data: Any, settings: Any) -> Any:
    """The streaming calibrator without the overlap: each batch run, then folded in."""
    from qconvert.calibrate.streaming import StreamingCalibrator

    with tempfile.TemporaryDirectory(prefix="bench-calib-") as tmp:
        calibrator = StreamingCalibrator(model, settings, Path(tmp))
        for batch in data.batches(calibrator.fixed_batch or settings.batch_size):
            calibrator.add_batch(batch)
        return calibrator.result()


def _load_before(path: Path) -> Any:
    """The streaming module of another revision (a file the user named)."""
    spec = importlib.util.spec_from_file_location("before_streaming", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up)
    spec.loader.exec_module(module)
    return module


def _same_ranges(a: Any, b: Any) -> bool:
    return set(a.data) == set(b.data) and all(
        np.array_equal(x, y) for t in a.data for x, y in zip(a[t].range_value, b[t].range_value, strict=True)
    )


def measure(
    model: Path, feeds: dict[str, np.ndarray], rounds: int, before: Path | None = None
) -> tuple[dict[str, dict[str, list[float]]], dict[str, bool]]:
    """Seconds (wall, CPU) per "variant|method" and round; and per method, whether --before's
    ranges equal this tree's."""
    import onnx

    from qconvert.calibrate import Dataset
    from qconvert.calibrate.streaming import CalibrationSettings, calibrate_streaming, replaced_ranges
    from qconvert.quantize.static import static_op_types

    data = Dataset("bench", feeds)
    ops = static_op_types()
    replaced = replaced_ranges(onnx.load(str(model)), ops)
    settings = {m: CalibrationSettings(method=m, op_types=ops, replaced=replaced) for m in METHODS}
    calibrators = {
        "as qconvert runs it": lambda m: calibrate_streaming(model, data, settings[m]),
        "folded on one thread": lambda m: _one_thread(model, data, settings[m]),
    }
    if before is not None:
        old = _load_before(before)
        calibrators["before"] = lambda m: old.calibrate_streaming(
            model, data, old.CalibrationSettings(method=m, op_types=ops, replaced=replaced)
        )
    runs = [(v, m) for v in calibrators for m in METHODS]
    times: dict[str, dict[str, list[float]]] = {f"{v}|{m}": {"wall": [], "cpu": []} for v, m in runs}
    ranges: dict[tuple[str, str], Any] = {}
    for r in range(rounds):
        for variant, method in runs:
            wall, cpu = time.perf_counter(), _cpu_seconds()
            ranges[variant, method] = calibrators[variant](method)
            times[f"{variant}|{method}"]["wall"].append(time.perf_counter() - wall)
            times[f"{variant}|{method}"]["cpu"].append(_cpu_seconds() - cpu)
        print(
            f"round {r + 1}: " + ", ".join(f"{k} {t['wall'][-1]:.2f} s" for k, t in times.items()), flush=True
        )
    same = {
        m: all(_same_ranges(ranges["as qconvert runs it", m], ranges[v, m]) for v in calibrators)
        for m in METHODS
    }
    return times, same


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
    parser.add_argument("--before", type=Path, help="a streaming.py of another revision, timed beside")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-calib-speed-") as tmp:
        model = args.model or _export(Path(tmp))
        with np.load(args.calibration) as npz:
            feeds = {k: np.ascontiguousarray(npz[k][: args.samples]) for k in npz.files if k != "labels"}
        load_before = os.getloadavg()[0]
        times, same = measure(model, feeds, args.rounds, args.before)
        load_after = os.getloadavg()[0]
    result = {"samples": args.samples, "rounds": args.rounds, "load": [load_before, load_after]}
    result["methods"] = summary(times)
    result["same_ranges"] = same
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
    for method, equal in same.items():
        print(f"{method}: ranges {'identical' if equal else 'DIFFERENT'} in every variant")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
