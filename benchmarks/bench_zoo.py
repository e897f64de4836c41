"""The zoo (tests/e2e/_zoo.py) and the foreign ONNX files through qconvert, side by side with plain
onnxruntime on the same fp32 ONNX and the same inputs; prints the README's table (markdown).

    PYTHONPATH=. python benchmarks/bench_zoo.py                 # everything
    PYTHONPATH=. python benchmarks/bench_zoo.py --models resnet18,vit_tiny --targets cpu
    PYTHONPATH=. python benchmarks/bench_zoo.py --json zoo.json  # the rows, for the README

Agreement: top-1 (classifiers), per-pixel argmax (segmentation), next-token argmax (decoder), mean
cosine otherwise; all against qconvert's fp32 reference.onnx on 32 held-out inputs (32 calibration
inputs), both quantizers fed the same ones. Latency ratio: qconvert's own interleaved measurement
(model / fp32 p50, batch 1, CPU): rough on a shared machine. Size ratio: artifact / fp32 file.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

import _zoo  # noqa: E402
import test_zoo  # noqa: E402


def _fmt(value: float | None, kind: str) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "db":
        return f"{value:.1f} dB"
    if kind == "cos":
        return f"{value:.4f}"
    return f"{value:.2f}x"


def row(o: test_zoo.Outcome, family: str) -> str:
    kind = "cos" if o.metric == "cosine" else "pct"
    ort = _fmt(o.ort, kind) if o.ort is not None else f"fails: {o.ort_error.split(':')[0]}"
    fmt = "16-bit" if o.bits == 16 else "int8"
    return (
        f"| {o.model} | {family} | {o.target} {fmt} | {o.status} | {o.metric} | {_fmt(o.qconvert, kind)} | {ort} "
        f"| {_fmt(o.sqnr_db, 'db')} | {_fmt(o.ort_sqnr_db, 'db')} | {_fmt(o.latency_ratio, 'x')} "
        f"| {_fmt(o.size_ratio, 'x')} | {_fmt(o.ort_size_ratio, 'x')} |"
    )


HEADER = (
    "| model | family | target | qconvert status | metric | qconvert | onnxruntime | SQNR qconvert | SQNR ort "
    "| latency (qconvert/fp32) | size qconvert | size ort |\n" + "|---" * 12 + "|"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="", help="comma-separated zoo names (and foreign kinds); default all"
    )
    parser.add_argument("--targets", default="cpu,tensorrt,cuda")
    parser.add_argument("--json", default="", help="also write the rows here")
    args = parser.parse_args()
    wanted = set(filter(None, args.models.split(",")))
    targets = [(t, b) for t, b in test_zoo.TARGETS if t in args.targets.split(",")]
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for kind in sorted(test_zoo.FOREIGN):
            if wanted and kind not in wanted:
                continue
            for target, bits in targets:
                outcome, _, _ = test_zoo.foreign_case(kind, target, bits, Path(tmp) / kind)
                rows.append(row(outcome, "foreign ONNX"))
                records.append({**asdict(outcome), "family": "foreign ONNX"})
                print(rows[-1], flush=True)
        for target, bits in targets:  # every model on one target before the next target
            for entry in _zoo.ZOO:
                if wanted and entry.name not in wanted:
                    continue
                reason = _zoo.available(entry)
                if reason:
                    rows.append(
                        f"| {entry.name} | {entry.family} | {target} | skipped: {reason} |" + " |" * 8
                    )
                    continue
                start = time.perf_counter()
                work = Path(tmp) / f"{entry.name}-{target}"
                try:
                    outcome, _ = test_zoo.zoo_case(entry.name, target, bits, work, fast=False)
                except Exception as e:  # one model's failure must not end the table
                    rows.append(f"| {entry.name} | {entry.family} | {target} | bench error: {type(e).__name__}: "
                                f"{str(e)[:160]} |" + " |" * 8)  # fmt: skip
                    print(rows[-1], flush=True)
                    continue
                rows.append(row(outcome, entry.family))
                records.append(
                    {**asdict(outcome), "family": entry.family, "seconds": time.perf_counter() - start}
                )
                print(rows[-1], flush=True)
    for record in records:
        record.pop("output", None)
    print("\n" + HEADER + "\n" + "\n".join(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
