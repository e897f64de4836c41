"""qconvert int8 vs fp32 vs the plain onnxruntime way, measured in one run on this machine.

    python benchmarks/bench_int8.py [--repeats 200] [--json out.json]

For each model: accuracy / top-1 agreement against the PyTorch original on held-out inputs,
file size, and p50 latency at batch 1 and batch 64 on onnxruntime's CPU provider, with every
variant timed interleaved in the same process. Variants:

- fp32: the plain torch.onnx export (dynamo)
- qconvert cpu: `qconvert export --target cpu` (U8S8 Q/DQ, per-channel, reduce_range without VNNI)
- qconvert tensorrt: `qconvert export --target tensorrt` (S8S8 symmetric Q/DQ), run here on CPU
- ort static default: onnxruntime `quantize_static` with its defaults (Q/DQ, S8S8, per-tensor)
- ort dynamic default: onnxruntime `quantize_dynamic` with its defaults

Models: the built-in digits CNN (trained, labelled held-out set), and a wider CNN on 32x32
inputs with random weights (latency-bound; agreement only, since it has no task).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qconvert import RunConfig  # noqa: E402
from qconvert.benchmark import interleaved_latency  # noqa: E402
from qconvert.calibrate import Dataset, ort_reader  # noqa: E402
from qconvert.pipeline import export  # noqa: E402
from qconvert.runtime import make_session  # noqa: E402
from qconvert.validation.metrics import compare  # noqa: E402

WIDE_MODEL = """
import torch
from torch import nn

INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)


def build():
    torch.manual_seed(0)
    layers, c = [], 3
    for width in (32, 64, 64, 128):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.MaxPool2d(2))
        c = width
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 2 * 2, 256), nn.ReLU(), nn.Linear(256, 10)).eval()


def example_inputs():
    return (torch.zeros(1, 3, 32, 32),)
"""


def ort_baselines(fp32: Path, calib: Dataset, work: Path) -> dict[str, Path]:
    from onnxruntime.quantization import quant_pre_process, quantize_dynamic, quantize_static

    prepared = work / "ort_prepared.onnx"
    quant_pre_process(str(fp32), str(prepared))
    static, dynamic = work / "ort_static.onnx", work / "ort_dynamic.onnx"
    quantize_static(str(prepared), str(static), ort_reader(calib, batch_size=16))
    quantize_dynamic(str(prepared), str(dynamic))
    return {"ort static default": static, "ort dynamic default": dynamic}


def bench_model(
    name: str, source: str | None, calib: Path | None, data: Path | None, work: Path, repeats: int
) -> list[dict]:
    runs = {}
    for target in ("cpu", "tensorrt"):
        cfg = RunConfig(
            source=source,
            target=target,
            calibration=str(calib) if calib else None,
            data=str(data) if data else None,
            out_dir=work / f"{name}-{target}",
            latency_repeats=5,
        )
        runs[target] = export(cfg)
    out = runs["cpu"].out_dir
    fp32_path = out / "reference.onnx"
    heldout_npz = np.load(data if data else calib)
    feeds = {"input": heldout_npz["input"]}
    labels = heldout_npz["labels"] if "labels" in heldout_npz.files else None
    heldout = Dataset(str(data), feeds, labels)
    calib_ds = Dataset(str(calib), {"input": np.load(calib)["input"]})
    models = {
        "fp32": fp32_path,
        "qconvert cpu": out / "model.onnx",
        "qconvert tensorrt (on CPU)": runs["tensorrt"].out_dir / "model.onnx",
        **ort_baselines(fp32_path, calib_ds, work),
    }
    sessions = {k: make_session(p) for k, p in models.items()}
    reference = sessions["fp32"].run(heldout)[0]
    rows = []
    lat = {}
    for batch in (1, 64):
        x = {"input": feeds["input"][:batch]}
        lat[batch] = interleaved_latency(
            {k: (lambda s=s, x=x: s.inner.run(None, x)) for k, s in sessions.items()}, repeats
        )
    for key, session in sessions.items():
        logits = session.run(heldout)[0]
        m = compare(reference, logits)
        rows.append(
            {
                "model": name,
                "variant": key,
                "accuracy": None if labels is None else float((logits.argmax(1) == labels).mean()),
                "top1_agreement": m["top1_agreement"],
                "sqnr_db": m["sqnr_db"],
                "size_bytes": models[key].stat().st_size,
                "size_ratio": models[key].stat().st_size / fp32_path.stat().st_size,
                "p50_b1_ms": lat[1][key].p50_ms,
                "ratio_b1": lat[1][key].p50_ms / lat[1]["fp32"].p50_ms,
                "p50_b64_ms": lat[64][key].p50_ms,
                "ratio_b64": lat[64][key].p50_ms / lat[64]["fp32"].p50_ms,
            }
        )
    return rows


def markdown(rows: list[dict]) -> str:
    head = (
        "| model | variant | accuracy | top-1 agree | SQNR dB | size | p50 b=1 | vs fp32 | p50 b=64 | vs fp32 |\n"
        "|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        acc = "—" if r["accuracy"] is None else f"{100 * r['accuracy']:.2f}%"
        sqnr = "∞" if r["sqnr_db"] == float("inf") else f"{r['sqnr_db']:.1f}"
        lines.append(
            f"| {r['model']} | {r['variant']} | {acc} | {100 * r['top1_agreement']:.1f}% | {sqnr} | "
            f"{r['size_ratio']:.2f}x | {r['p50_b1_ms']:.3f} ms | {r['ratio_b1']:.2f}x | "
            f"{r['p50_b64_ms']:.2f} ms | {r['ratio_b64']:.2f}x |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch  # noqa: F401

    logging.getLogger("torch").setLevel(logging.ERROR)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows += bench_model(
            "digits CNN",
            None,
            ROOT / "calibration/digits_calib.npz",
            ROOT / "calibration/digits_heldout.npz",
            work,
            args.repeats,
        )
        (work / "wide.py").write_text(WIDE_MODEL)
        rng = np.random.default_rng(0)
        np.savez(work / "wide_calib.npz", input=rng.standard_normal((128, 3, 32, 32)).astype(np.float32))
        np.savez(work / "wide_held.npz", input=rng.standard_normal((256, 3, 32, 32)).astype(np.float32))
        rows += bench_model(
            "wide CNN (random weights)",
            f"{work / 'wide.py'}:build",
            work / "wide_calib.npz",
            work / "wide_held.npz",
            work,
            args.repeats,
        )
    import platform

    import onnxruntime

    print(
        f"onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
        f"{__import__('os').cpu_count()} cores, CPUExecutionProvider, {args.repeats} interleaved repeats\n"
    )
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
