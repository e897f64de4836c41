"""Verdicts the data can support: what qconvert says on few and on enough held-out samples.

    python benchmarks/bench_verdict.py [--no-photos] [--json out.json]

Part 1, the built-in digits CNN (int8, tensorrt target): one export, then `qconvert validate` of
the same artifact on the first n held-out digits for several n. Per n: the verdict, the top-1
agreement with its Wilson interval, the held-out samples the run says would settle an INCONCLUSIVE
verdict, and the verdict when the same model is validated again on that many samples (the check
that the estimate is right, on real data).

Part 2, the issue-15 case: EfficientNet-Lite1 with its real ImageNet weights on real photographs
(benchmarks/photos.py, benchmarks/efficientnet_lite.py). With 20 calibration crops and no --data,
qconvert used to set 4 aside, see all 4 agree and say PASSED; now the run says up front that 4 are
too few and the verdict is INCONCLUSIVE. With 100 calibration crops and the held-out photographs as
--data, the verdict and the interval it rests on.

Accuracy figures and verdicts do not depend on the machine; the seconds do (rough on a shared
2-core machine).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import qconvert  # noqa: E402
from qconvert.sources import zoo_root  # noqa: E402

SIZES = (4, 12, 40, 60, 72, 125, 193, 194, 600)


def _subset(folder: Path, n: int) -> Path:
    data = np.load(zoo_root() / "calibration" / "digits_heldout.npz")
    path = folder / f"digits-{n}.npz"
    np.savez(path, input=data["input"][:n], labels=data["labels"][:n])
    return path


def _row(run: Any) -> dict[str, Any]:
    validation = run.validation
    top1 = validation.intervals["logits"]["top1_agreement"]
    return {
        "samples": validation.samples,
        "verdict": run.verdict,
        "top1_agreement": validation.outputs["logits"]["top1_agreement"],
        "top1_interval": [top1.low, top1.high],
        "samples_to_settle": validation.samples_to_settle,
        "data_limited": validation.data_limited,
    }


def digits(work: Path) -> list[dict[str, Any]]:
    out = work / "digits-int8"
    qconvert.export(qconvert.RunConfig(target="tensorrt", data=str(_subset(work, 4)), out_dir=out))
    rows = []
    for n in SIZES:
        row = _row(qconvert.validate(qconvert.ValidateConfig(candidate=out, data=str(_subset(work, n)))))
        settle = row["samples_to_settle"]
        if settle is not None and settle <= 600:
            again = qconvert.validate(qconvert.ValidateConfig(candidate=out, data=str(_subset(work, settle))))
            row["verdict_on_that_many"] = again.verdict
        rows.append(row)
    return rows


def _photo_run(work: Path, name: str, calibration: np.ndarray, heldout: np.ndarray | None) -> dict[str, Any]:
    calib = work / f"{name}-calibration.npz"
    np.savez(calib, input=calibration)
    data = None
    if heldout is not None:
        np.savez(work / f"{name}-heldout.npz", input=heldout)
        data = str(work / f"{name}-heldout.npz")
    start = time.perf_counter()
    result = qconvert.export(
        qconvert.RunConfig(
            source=str(ROOT / "benchmarks" / "efficientnet_lite.py") + ":build",
            target="cpu",
            calibration=str(calib),
            data=data,
            out_dir=work / name,
            recover=(),  # the verdict, not accuracy recovery, is measured here
        )
    )
    row = _row(result)
    sqnr = result.validation.intervals["logits"]["sqnr_db"]
    row.update(
        calibration=len(calibration),
        sqnr_db=result.validation.outputs["logits"]["sqnr_db"],
        sqnr_interval=[sqnr.low, sqnr.high],
        notes=[n for n in result.report["notes"] if "held-out" in n],
        seconds=time.perf_counter() - start,
    )
    return row


def photos_case(work: Path) -> list[dict[str, Any]]:
    import photos

    few = photos.build(resolution=240, calibration_images=20)
    many = photos.build(resolution=240, calibration_images=100)
    return [
        _photo_run(work, "lite1-20-no-data", few.calibration, None),
        _photo_run(work, "lite1-100-data", many.calibration, many.heldout),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--no-photos", action="store_true", help="only the digits part (seconds, no photos)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-verdict-") as tmp:
        work = Path(tmp)
        result: dict[str, Any] = {"digits": digits(work)}
        if not args.no_photos:
            result["photos"] = photos_case(work)
    print("digits CNN, int8 tensorrt, validated on the first n held-out digits (95% intervals):")
    print("   n  verdict        top-1 agreement [interval]     settles at  verdict there")
    for r in result["digits"]:
        low, high = r["top1_interval"]
        print(
            f"{r['samples']:4d}  {r['verdict']:13s}  {100 * r['top1_agreement']:6.2f}% "
            f"[{100 * low:6.2f}%, {100 * high:6.2f}%]  {r['samples_to_settle'] or '-':>10}  "
            f"{r.get('verdict_on_that_many', '-')}"
        )
    for r in result.get("photos", []):
        low, high = r["top1_interval"]
        print(
            f"EfficientNet-Lite1, {r['calibration']} calibration crops, {r['samples']} held-out: {r['verdict']}; "
            f"top-1 {100 * r['top1_agreement']:.1f}% [{100 * low:.1f}%, {100 * high:.1f}%], SQNR "
            f"{r['sqnr_db']:.1f} dB [{r['sqnr_interval'][0]:.1f}, {r['sqnr_interval'][1]:.1f}], settles at "
            f"{r['samples_to_settle'] or '-'} ({r['seconds']:.0f} s)"
        )
        for note in r["notes"]:
            print(f"  note: {note}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
