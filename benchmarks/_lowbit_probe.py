"""Probe for the "lowbit" recovery pieces on the real EfficientNet-Lite1: mse activation ranges,
clip_weights and adaround, alone and combined (with bias_correction), against qconvert's minmax.

    python benchmarks/_lowbit_probe.py [--quick] [--target cpu] [--adaround-budget 300] [--json out.json]

Reuses bench_accuracy.py's export, photo sets (benchmarks/photos.py: calibration and held-out
images from different source photos), session and metric helpers. "seconds" is the time of the
recovery steps plus the final quantization (calibration included), on a shared 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_accuracy as bench
import photos

from qconvert.calibrate import Dataset
from qconvert.quantize.static import quantize_static_int8
from qconvert.recover import RECOVERY
from qconvert.recover.adaround import AdaRound
from qconvert.recover.base import RecoveryInput

# (label, calibration method, steps)
VARIANTS = (
    ("minmax (qconvert static)", "minmax", ()),
    ("mse ranges", "mse", ()),
    ("clip_weights", "minmax", ("clip_weights",)),
    ("mse + clip_weights", "mse", ("clip_weights",)),
    ("bias_correction", "minmax", ("bias_correction",)),
    ("mse + bias_correction", "mse", ("bias_correction",)),
    ("mse + clip_weights + bias_correction", "mse", ("clip_weights", "bias_correction")),
    ("adaround", "minmax", ("adaround",)),
    ("mse + adaround", "mse", ("adaround",)),
    ("mse + adaround + bias_correction", "mse", ("adaround", "bias_correction")),
)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="32 calibration images, 1 held-out crop per photo"
    )
    parser.add_argument("--target", default="cpu")
    parser.add_argument("--adaround-budget", type=float, default=300.0)
    parser.add_argument("--only", default="", help="comma list of variant labels to run")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lowbit-probe-"))
    sets = photos.build(240, 32 if args.quick else 100, 1 if args.quick else 2)
    calib, held = sets.calibration, sets.heldout
    manifest = sets.manifest()
    print(
        f"photos: calibration {len(calib)} images ({manifest['calibration']['photos']} photos), held-out "  # type: ignore[index]
        f"{len(held)} images ({manifest['heldout']['photos']} photos)",  # type: ignore[index]
        flush=True,
    )
    reference, prepared = bench.export_model(work)
    ref = bench.run(bench.session(reference, True), held)["logits"]
    dataset = Dataset("photos", {"input": calib})
    fp32 = onnx.load(str(prepared))
    exact = args.target != "cpu"
    rows: list[dict[str, Any]] = []
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    print(
        "| variant | top-1 agreement | confident agreement | logits SQNR dB | KL | seconds | step seconds |"
    )
    print("|---|---|---|---|---|---|---|")
    for label, method, steps in VARIANTS:
        if only and label not in only:
            continue
        qc = replace(bench.target_config(args.target), calibration_method=method)
        inp = RecoveryInput(qc=qc, calibration=dataset, work=work)
        start = time.perf_counter()
        model, notes, per_step = fp32, [], {}
        for name in steps:
            step = AdaRound(budget_seconds=args.adaround_budget) if name == "adaround" else RECOVERY.get(name)
            result = step(model, None, inp)
            model = result.model
            notes.extend(result.notes)
            per_step[name] = round(result.seconds, 1)
        src, dest = work / f"{len(rows)}-fp32.onnx", work / f"{len(rows)}-q.onnx"
        onnx.save_model(model, str(src))
        began = time.perf_counter()
        quantize_static_int8(src, dest, qc, dataset)
        per_step["quantize"] = round(time.perf_counter() - began, 1)
        seconds = time.perf_counter() - start
        out = bench.run(bench.session(dest, not exact), held)["logits"]
        row = {
            "variant": label,
            **bench.metrics(ref, out),
            "seconds": seconds,
            "steps": per_step,
            "notes": notes,
        }
        rows.append(row)
        print(
            f"| {label} | {row['top1_agreement']:.1%} | {row['confident_agreement']:.1%} "
            f"(n={row['confident_n']}) | {row['sqnr_db']:.2f} | {row['kl']:.4f} | {seconds:.0f} | {per_step} |",
            flush=True,
        )
        for note in notes:
            print(f"    {note}", flush=True)
    if args.json:
        args.json.write_text(
            json.dumps({"target": args.target, "photos": manifest, "rows": rows}, indent=1, default=float)
        )
    np.save(work / "ref.npy", ref)


if __name__ == "__main__":
    main()
