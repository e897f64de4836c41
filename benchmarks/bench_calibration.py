"""Peak memory and wall time of calibration: qconvert's streaming calibrator vs onnxruntime's.

    python benchmarks/bench_calibration.py [--samples 100,2000] [--methods minmax,entropy,percentile]
        [--batch 20] [--ort-cap-gb 8] [--layers 4] [--repeats 1] [--json out.json]

The model is a small transformer encoder built here with random (seeded, untrained) weights:
token ids [N, 128] -> embedding (d 256) -> 4 pre-norm encoder layers (4 heads, FFN 1024, GELU)
-> mean pool -> linear. It is exported with torch's dynamo exporter and prepared by qconvert;
both calibrators calibrate the same 180 tensors (the inputs and outputs of the op types
`quantize_static` quantizes), about 36 MB of activations per sample. Ours measures 96 of them: the
other 84 are Reshape/Transpose outputs that hold the same values as a measured tensor.

Every measurement runs in its own child process, one after another:
- baseline: imports, loads the model and the data, calibrates nothing;
- ours: `calibrate_streaming` (qconvert.calibrate.streaming);
- onnxruntime: `create_calibrator` + `collect_data` + `compute_data`, with its default options.
Peak RSS is the child's own `ru_maxrss`; "growth" is that minus the baseline child's for the same
sample count. Time is the wall time of the calibration call alone, in the child, and in brackets
its CPU time (user + system, all threads): on a shared machine the CPU time is the steadier
measure of the work done. onnxruntime keeps every sample's activations, so a watchdog thread stops
it once its RSS passes --ort-cap-gb; the table then shows "> cap" and how many samples it had
taken by then. The ranges of ours and
onnxruntime's are compared where both finish ("max diff": the largest difference of a range end,
as a share of onnxruntime's range width, over all tensors).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VOCAB, SEQ, D_MODEL, HEADS = 1000, 128, 256, 4
PAGE = os.sysconf("SC_PAGE_SIZE")


def build_model(path: Path, layers: int) -> Path:
    """Export the seeded encoder to `path` and prepare it as qconvert does; returns the prepared model."""
    import torch
    from torch import nn

    from qconvert.prepare import prepared_from_onnx

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D_MODEL)
            self.pos = nn.Parameter(torch.randn(SEQ, D_MODEL) * 0.02)
            layer = nn.TransformerEncoderLayer(
                D_MODEL, HEADS, 4 * D_MODEL, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
            )
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(D_MODEL, 2)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(ids) + self.pos).mean(dim=1))

    torch.manual_seed(0)
    model = Encoder().eval()
    example = torch.randint(0, VOCAB, (2, SEQ))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model,
            (example,),
            None,
            dynamo=True,
            opset_version=18,
            input_names=["ids"],
            output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=4096)},),
            verbose=False,
        )
    import onnx

    onnx.save(program.model_proto, str(path))
    return prepared_from_onnx(path, path.with_name("prepared.onnx"))


# --- children -------------------------------------------------------------------------------------


def _rss_bytes() -> int:
    with Path("/proc/self/statm").open() as f:
        return int(f.read().split()[1]) * PAGE


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def _cpu_seconds() -> float:
    """User + system time of this process, all its threads (onnxruntime's included)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _save_ranges(ranges: Any, path: Path) -> None:
    np.savez(
        path,
        **{
            name: np.array([np.ravel(td.lowest)[0], np.ravel(td.highest)[0]], dtype=np.float64)
            for name, td in ranges.items()
        },
    )


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement, in this process: load, then calibrate (unless baseline)."""
    import onnx
    import onnxruntime
    import onnxruntime.quantization  # noqa: F401

    from qconvert.calibrate import Dataset, ort_reader
    from qconvert.calibrate.streaming import ORT_METHODS, CalibrationSettings, calibrate_streaming
    from qconvert.quantize.static import static_op_types

    onnx.load(str(args.model))
    data = Dataset("bench", {"ids": np.load(args.data)["ids"][: args.samples].copy()})
    done = [0]

    def on_batch(samples_done: int, _total: int) -> None:
        done[0] = samples_done

    result: dict[str, Any] = {"kind": args.child, "samples": args.samples, "method": args.method}
    if args.child == "baseline":
        return {**result, "peak_rss": _peak_rss_bytes()}
    start, cpu_start = time.perf_counter(), _cpu_seconds()
    if args.child == "ours":
        settings = CalibrationSettings(method=args.method, op_types=static_op_types(), batch_size=args.batch)
        ranges = calibrate_streaming(args.model, data, settings, on_batch)
    else:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        _watch_rss(args.cap_gb * 2**30, start, done, result)
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(
                args.model,
                list(static_op_types()),
                augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                calibrate_method=getattr(CalibrationMethod, ORT_METHODS[args.method]),
            )
            calibrator.collect_data(ort_reader(data, batch_size=args.batch, on_batch=on_batch))
            ranges = calibrator.compute_data()
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    _save_ranges(ranges, args.ranges)
    return {**result, "seconds": seconds, "cpu_seconds": cpu, "peak_rss": _peak_rss_bytes()}


def _watch_rss(cap: int, start: float, done: list[int], result: dict[str, Any]) -> None:
    """Stop this process, reporting what it got to, once its RSS passes `cap`."""

    def watch() -> None:
        while True:
            if _rss_bytes() > cap:
                capped = {**result, "capped": True, "seconds": time.perf_counter() - start}
                capped.update(peak_rss=_peak_rss_bytes(), samples_done=done[0])
                sys.stdout.write(json.dumps(capped) + "\n")
                sys.stdout.flush()
                os._exit(0)
            time.sleep(0.02)

    threading.Thread(target=watch, daemon=True).start()


# --- parent ---------------------------------------------------------------------------------------


def measure(kind: str, method: str, samples: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        kind,
        "--model",
        str(work / "prepared.onnx"),
        "--data",
        str(work / "data.npz"),
        "--samples",
        str(samples),
        "--methods",
        method,
        "--batch",
        str(args.batch),
        "--ort-cap-gb",
        str(args.ort_cap_gb),
        "--ranges",
        str(work / f"{kind}-{method}-{samples}.npz"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{kind} {method} {samples} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Repeats of one measurement: the median time and the highest peak RSS (the last run if any
    was capped)."""
    capped = [m for m in runs if m.get("capped")]
    if capped:
        return capped[-1]
    return {
        **runs[-1],
        "seconds": float(np.median([m["seconds"] for m in runs])),
        "cpu_seconds": float(np.median([m["cpu_seconds"] for m in runs])),
        "peak_rss": max(m["peak_rss"] for m in runs),
        "all_seconds": [m["seconds"] for m in runs],
    }


def max_range_diff(ours: Path, theirs: Path) -> float:
    a, b = np.load(ours), np.load(theirs)
    worst = 0.0
    for name in b.files:
        width = max(float(b[name][1] - b[name][0]), 1e-12)
        worst = max(worst, float(np.abs(a[name] - b[name]).max()) / width)
    return worst


def gb(n: float) -> str:
    return f"{n / 2**30:.2f} GB"


def cell(m: dict[str, Any], base: dict[str, Any], cap_gb: float) -> tuple[str, str]:
    if m.get("capped"):
        return (
            f"> {cap_gb:g} GB cap (at {m['samples_done']} samples)",
            f"stopped at {m['seconds']:.1f} s",
        )
    rss = f"{gb(m['peak_rss'])} (+{gb(m['peak_rss'] - base['peak_rss'])})"
    return rss, f"{m['seconds']:.1f} s ({m['cpu_seconds']:.1f} s)"


def table(rows: list[dict[str, Any]], sample_counts: list[int], cap_gb: float) -> str:
    lo, hi = min(sample_counts), max(sample_counts)
    ratio_head = f"ours RSS {hi}/{lo} (growth)" if hi != lo else "ours RSS ratio"
    lines = [
        "| method | samples | ours: peak RSS (growth) | ours: time (CPU) | onnxruntime: peak RSS (growth) "
        f"| onnxruntime: time (CPU) | {ratio_head} | time ours/ORT (CPU) | max diff |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ours_rss, ours_t = cell(r["ours"], r["baseline"], cap_gb)
        ort_rss, ort_t = cell(r["ort"], r["baseline"], cap_gb)
        ratio = ""
        first = next(x for x in rows if x["method"] == r["method"] and x["samples"] == lo)
        if r["samples"] == hi and hi != lo:
            total = r["ours"]["peak_rss"] / first["ours"]["peak_rss"]
            growth = (r["ours"]["peak_rss"] - r["baseline"]["peak_rss"]) / max(
                first["ours"]["peak_rss"] - first["baseline"]["peak_rss"], 1
            )
            ratio = f"{total:.2f}x ({growth:.2f}x)"
        speed = (
            ""
            if r["ort"].get("capped")
            else f"{r['ours']['seconds'] / r['ort']['seconds']:.2f}x "
            f"({r['ours']['cpu_seconds'] / r['ort']['cpu_seconds']:.2f}x)"
        )
        diff = "" if r.get("max_diff") is None else f"{100 * r['max_diff']:.2f}%"
        lines.append(
            f"| {r['method']} | {r['samples']} | {ours_rss} | {ours_t} | {ort_rss} | {ort_t} | {ratio} | "
            f"{speed} | {diff} |"
        )
    return "\n".join(lines)


def parent(args: argparse.Namespace) -> None:
    sample_counts = [int(s) for s in args.samples.split(",")]
    methods = args.methods.split(",")
    bad = [n for n in sample_counts if n % args.batch]
    if bad:  # onnxruntime's histogram calibrators stack batches: they must all have the same size
        sys.exit(f"--batch {args.batch} must divide every sample count; it does not divide {bad}")
    rows = []
    load_before = f"{os.getloadavg()[0]:.1f}"
    with tempfile.TemporaryDirectory(prefix="bench-calibration-") as tmp:
        work = Path(tmp)
        build_model(work / "encoder.onnx", args.layers)
        ids = np.random.default_rng(0).integers(0, VOCAB, (max(sample_counts), SEQ)).astype(np.int64)
        np.savez(work / "data.npz", ids=ids)
        for method in methods:
            for n in sample_counts:
                row: dict[str, Any] = {"method": method, "samples": n}
                row["baseline"] = measure("baseline", method, n, args, work)
                runs: dict[str, list[dict[str, Any]]] = {"ours": [], "ort": []}
                for r in range(args.repeats):  # alternate which goes first, against drifting load
                    for kind in ("ours", "ort") if r % 2 == 0 else ("ort", "ours"):
                        runs[kind].append(measure(kind, method, n, args, work))
                        print(f"{method} {n} {kind}: {runs[kind][-1]}", file=sys.stderr, flush=True)
                row.update({kind: summary(measured) for kind, measured in runs.items()})
                if not row["ort"].get("capped"):
                    row["max_diff"] = max_range_diff(
                        work / f"ours-{method}-{n}.npz", work / f"ort-{method}-{n}.npz"
                    )
                rows.append(row)
    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, {os.cpu_count()} cores, batch {args.batch}, "
        f"encoder with {args.layers} layers (seq {SEQ}, d {D_MODEL}), random weights, "
        f"median of {args.repeats} run(s), load average before/after {load_before} / {os.getloadavg()[0]:.1f}\n"
    )
    print(table(rows, sample_counts, args.ort_cap_gb))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", default="100,2000", help="sample counts, comma-separated")
    parser.add_argument("--methods", default="minmax,entropy,percentile")
    parser.add_argument("--batch", type=int, default=20, help="samples per calibration batch (both)")
    parser.add_argument("--ort-cap-gb", type=float, default=8.0, help="stop onnxruntime past this RSS")
    parser.add_argument("--layers", type=int, default=4, help="encoder layers")
    parser.add_argument("--repeats", type=int, default=1, help="runs of ours and onnxruntime (median time)")
    parser.add_argument("--json", type=Path)
    # internal: one measurement in a child process
    parser.add_argument("--child", choices=["baseline", "ours", "ort"], help=argparse.SUPPRESS)
    parser.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ranges", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.method, args.samples, args.cap_gb = args.methods, int(args.samples), args.ort_cap_gb
        sys.stdout.write(json.dumps(child(args)) + "\n")
    else:
        parent(args)


if __name__ == "__main__":
    main()
