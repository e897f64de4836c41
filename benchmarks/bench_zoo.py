"""The zoo (tests/e2e/_zoo.py) and the foreign ONNX files through qconvert, side by side with plain
onnxruntime on the same fp32 ONNX and the same inputs; prints the README's table (markdown).

    PYTHONPATH=. python benchmarks/bench_zoo.py                 # everything
    PYTHONPATH=. python benchmarks/bench_zoo.py --models resnet18,vit_tiny --targets cpu
    PYTHONPATH=. python benchmarks/bench_zoo.py --json zoo.json  # the rows, for the README

Agreement: top-1 (classifiers), per-pixel argmax (segmentation), next-token argmax (decoder), mean
cosine otherwise; all against qconvert's fp32 reference.onnx, both quantizers fed the same inputs:
32 calibration inputs (16 for the foreign files) and as many held-out ones as qconvert's default
tolerance needs to decide a verdict (test_zoo.heldout_size: 125 for a classifier at 8 bits, 765 at
16 bits, 72 otherwise). The verdict column is qconvert's own, with the check that decided it and its
95% interval. Latency ratio: qconvert's own interleaved measurement (model / fp32 p50, batch 1, CPU):
rough on a shared machine. Size ratio: artifact / fp32 file. Seconds: the whole case, both quantizers.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, replace
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
    paired = "-" if o.discordant is None else f"{o.discordant[0]} / {o.discordant[1]}"
    return (
        f"| {o.model} | {family} | {o.target} {fmt} | {o.status} | {o.check or '-'} | {o.heldout} "
        f"| {o.metric} | {_fmt(o.qconvert, kind)} | {ort} | {paired} "
        f"| {_fmt(o.sqnr_db, 'db')} | {_fmt(o.ort_sqnr_db, 'db')} "
        f"| {_fmt(o.latency_ratio, 'x')} | {_fmt(o.size_ratio, 'x')} | {_fmt(o.ort_size_ratio, 'x')} "
        f"| {o.seconds:.0f} |"
    )


COLUMNS = (
    "model", "family", "target", "qconvert verdict", "deciding check, 95% interval (bound)", "held-out",
    "metric", "qconvert", "onnxruntime", "samples only qconvert / only ort agrees on", "SQNR qconvert", "SQNR ort", "latency (qconvert/fp32)",
    "size qconvert", "size ort", "seconds",
)  # fmt: skip
HEADER = "| " + " | ".join(COLUMNS) + " |\n" + "|---" * len(COLUMNS) + "|"
# one per family first, so a run cut short still covers every family
REPRESENTATIVES = (
    "resnet18", "efficientnet_lite1", "vit_tiny", "ssdlite_mbv3", "lraspp_mbv3", "wav2vec2_tiny",
    "bert_tiny", "gpt2_tiny",
)  # fmt: skip


def cases(wanted: set[str], targets: list[tuple[str, int]]) -> list[tuple[str, str, int]]:
    """(name, target, bits): the foreign files, then the representatives, then the rest of the zoo;
    every target of a model before the next model."""
    names = [*sorted(test_zoo.FOREIGN), *REPRESENTATIVES]
    names += [e.name for e in _zoo.ZOO if e.name not in names]
    return [(n, t, b) for n in names if not wanted or n in wanted for t, b in targets]


def render(files: list[str]) -> str:
    """The markdown table of the rows in `files`, in the benchmark's case order."""
    by_case: dict[tuple[str, str], dict] = {}
    for file in files:
        for record in json.loads(Path(file).read_text()):
            by_case[record["model"], record["target"]] = record
    order = {case: i for i, case in enumerate((n, t) for n, t, _ in cases(set(), list(test_zoo.TARGETS)))}
    rows = []
    for key in sorted(by_case, key=lambda k: order.get(k, len(order))):
        record = dict(by_case[key])
        family = record.pop("family")
        record.setdefault("output", "")
        rows.append(row(test_zoo.Outcome(**record), family))
    return HEADER + "\n" + "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", default="", help="comma-separated zoo names (and foreign kinds); default all"
    )
    parser.add_argument("--targets", default="cpu,tensorrt,cuda")
    parser.add_argument("--json", default="", help="also write the rows here (after every case)")
    parser.add_argument(
        "--qconvert-args", default="", help="extra `qconvert export` arguments, e.g. '--recover none'"
    )
    parser.add_argument(
        "--heldout", type=int, default=0,
        help="held-out samples per zoo model (default: what the default tolerance needs to be decided)",
    )  # fmt: skip
    parser.add_argument(
        "--render", nargs="+", default=[], metavar="JSON",
        help="run nothing: print the table of these --json files (a later file's row for the same model "
        "and target replaces an earlier one's)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.render:
        print(render(args.render))
        return 0
    wanted = set(filter(None, args.models.split(",")))
    targets = [(t, b) for t, b in test_zoo.TARGETS if t in args.targets.split(",")]
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="bench-zoo-") as tmp:
        for name, target, bits in cases(wanted, targets):
            work = Path(tmp) / f"{name}-{target}"
            family = "foreign ONNX" if name in test_zoo.FOREIGN else _zoo.BY_NAME[name].family
            reason = None if name in test_zoo.FOREIGN else _zoo.available(_zoo.BY_NAME[name])
            if reason:
                rows.append(f"| {name} | {family} | {target} | skipped: {reason} |" + " |" * 12)
                continue
            start = time.perf_counter()
            try:
                if name in test_zoo.FOREIGN:
                    outcome, out, names = test_zoo.foreign_case(name, target, bits, work, fast=False)
                else:
                    entry = _zoo.BY_NAME[name]
                    outcome, out = test_zoo.zoo_case(
                        name,
                        target,
                        bits,
                        work,
                        False,
                        args.heldout or None,
                        tuple(args.qconvert_args.split()),
                    )
                    names = (list(entry.inputs), list(entry.outputs))
            except Exception as e:  # one model's failure must not end the table
                rows.append(f"| {name} | {family} | {target} | bench error: {type(e).__name__}: "
                            f"{str(e)[:160]} |" + " |" * 12)  # fmt: skip
                print(rows[-1], flush=True)
                continue
            try:  # the test's assertions: onnx.checker, names, Q/DQ, no worse than onnxruntime
                test_zoo.check(outcome, out, names)
            except AssertionError as e:
                outcome = replace(
                    outcome, status=f"{outcome.status}; CHECK FAILED: {str(e).splitlines()[0][:160]}"
                )
            outcome = replace(outcome, seconds=time.perf_counter() - start)
            rows.append(row(outcome, family))
            records.append({**asdict(outcome), "family": family})
            if outcome.rc not in (0, 1):
                print(outcome.output, flush=True)
            else:
                records[-1].pop("output")
            print(rows[-1], flush=True)
            if args.json:
                Path(args.json).write_text(json.dumps(records, indent=1))
            shutil.rmtree(work, ignore_errors=True)
    print("\n" + HEADER + "\n" + "\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
