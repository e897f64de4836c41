"""A second CNN family with real trained weights: PaddleOCR's PP-OCRv4 text detector (DBNet head on a
PP-LCNet-style backbone: depthwise convs, hard-swish, squeeze-excite), a foreign ONNX file, on real
photographs with text drawn on them.

    pip download --no-deps rapidocr-onnxruntime==1.4.4 -d wheels   # or pip install --no-deps ...
    python benchmarks/bench_ocr_det.py [--model PATH] [--target cpu|tensorrt] [--no-nncf] [--nncf-full]
                                       [--json F]

The model is the `ch_PP-OCRv4_det_infer.onnx` that the rapidocr-onnxruntime wheel ships (found in the
installed package, in a downloaded wheel under --wheels, or given with --model). It maps a (1, 3, H, W)
image, (pixel / 255 - 0.5) / 0.5, to a text-probability map (1, 1, H, W).

Inputs: the crops of benchmarks/photos.py at 320x320 (calibration and held-out from different source
photographs), each with two to four lines of text drawn on it in a DejaVu font Debian ships (seeded
sizes, positions and colours): calibration images take their lines from
benchmarks/data/sentences_calib.txt, held-out ones from sentences_heldout.txt.

Figures against fp32 on the held-out images: SQNR of the probability map, the intersection-over-union
of the text masks (probability > 0.3, the detector's own threshold, over all held-out pixels) and the
share of pixels whose mask differs; latency interleaved with fp32 at batch 1 (rough on a shared
machine). Variants: plain onnxruntime quantize_static, qconvert `--recover none`, `qconvert export`
itself ("cli": the model.onnx it ships, its verdict and intervals), qconvert's family default rebuilt
step by step (benchmarks/bench_accuracy.py's "default"), single steps and --placement choices
(bench_accuracy.py's STEPS@OPTION), NNCF (in NNCF_PYTHON's venv). With `--target tensorrt` the graphs
are run as written (exact Q/DQ arithmetic, what TensorRT computes), without onnxruntime, NNCF or
latency.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_accuracy as bench  # noqa: E402
import photos  # noqa: E402

from qconvert.benchmark import interleaved_latency  # noqa: E402
from qconvert.calibrate import Dataset  # noqa: E402
from qconvert.prepare import prepared_from_onnx  # noqa: E402
from qconvert.quantize.static import quantize_static_int8  # noqa: E402
from qconvert.recover.base import RecoveryInput  # noqa: E402

MODEL = "ch_PP-OCRv4_det_infer.onnx"
FONTS = Path("/usr/share/fonts/truetype/dejavu")
RESOLUTION = 320
THRESHOLD = 0.3  # rapidocr's Det.thresh
STEPS = (
    "cli",
    "default",
    "none@stem@mse@logits",
    "bias_correction",
    "gptq",
    "gptq+bias_correction",
    "gptq+bias_correction@stem@mse@logits",
    "none@compute",
    "none@inputs",
    "gptq+bias_correction@stem@mse@logits@compute",
    "gptq+bias_correction@stem@mse@logits@inputs",
)


def find_model(given: Path | None, wheels: Path) -> Path:
    if given is not None:
        return given
    spec = importlib.util.find_spec("rapidocr_onnxruntime")
    if spec is not None and spec.submodule_search_locations:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / MODEL
        if path.is_file():
            return path
    for wheel in sorted(wheels.glob("rapidocr_onnxruntime-*.whl")):
        dest = Path(tempfile.mkdtemp(prefix="ocr-model-"))
        with zipfile.ZipFile(wheel) as z:
            (dest / MODEL).write_bytes(z.read(f"rapidocr_onnxruntime/models/{MODEL}"))
        return dest / MODEL
    sys.exit(
        "no PP-OCRv4 detector: pip download --no-deps rapidocr-onnxruntime==1.4.4 -d wheels (or --model)"
    )


def with_text(images: np.ndarray, sentences: list[str], seed: int) -> np.ndarray:
    """`images` (photos.py's NCHW, (pixel - 127) / 128) with text lines drawn on them, as the detector
    takes them: (pixel / 255 - 0.5) / 0.5."""
    from PIL import Image, ImageDraw, ImageFont

    fonts = sorted(p for p in FONTS.glob("DejaVu*.ttf"))
    if not fonts:
        sys.exit(f"no DejaVu fonts under {FONTS}: apt-get install fonts-dejavu-core")
    rng = np.random.default_rng(seed)
    out = []
    for x in images:
        pixels = np.clip(x.transpose(1, 2, 0) * photos.STD + photos.MEAN, 0, 255).astype(np.uint8)
        im = Image.fromarray(pixels)
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 5))):
            font = ImageFont.truetype(str(fonts[int(rng.integers(len(fonts)))]), int(rng.integers(14, 34)))
            words = sentences[int(rng.integers(len(sentences)))].split()
            line = " ".join(words[: int(rng.integers(2, 7))])
            position = (int(rng.integers(0, RESOLUTION // 2)), int(rng.integers(0, RESOLUTION - 36)))
            light = bool(rng.integers(2))
            colour = tuple(int(v) for v in (rng.integers(200, 256, 3) if light else rng.integers(0, 60, 3)))
            draw.text(position, line, fill=colour, font=font)
        arr = np.asarray(im, np.float32).transpose(2, 0, 1)
        out.append((arr / 255.0 - 0.5) / 0.5)
    return np.stack(out).astype(np.float32)


def metrics(ref: np.ndarray, out: np.ndarray) -> dict[str, float]:
    a, b = ref.astype(np.float64), out.astype(np.float64)
    noise = float(((a - b) ** 2).sum())
    mask_ref, mask_out = a > THRESHOLD, b > THRESHOLD
    union = float((mask_ref | mask_out).sum())
    return {
        "sqnr_db": 10 * np.log10(float((a**2).sum()) / max(noise, 1e-30)),
        "mask_iou": float((mask_ref & mask_out).sum()) / max(union, 1.0),
        "mask_differs": float((mask_ref != mask_out).mean()),
        "text_pixels": float(mask_ref.mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path)
    parser.add_argument("--target", default="cpu", help="cpu or tensorrt")
    parser.add_argument("--wheels", type=Path, default=Path("wheels"))
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--no-nncf", action="store_true")
    parser.add_argument("--nncf-full", action="store_true")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-ocr-"))
    sets = photos.build(RESOLUTION, 100, 2)
    data = ROOT / "benchmarks" / "data"
    calib = with_text(sets.calibration, (data / "sentences_calib.txt").read_text().splitlines(), 1)
    held = with_text(sets.heldout, (data / "sentences_heldout.txt").read_text().splitlines(), 2)
    np.savez(work / "calibration.npz", x=calib)
    np.savez(work / "heldout.npz", x=held)
    exact = args.target != "cpu"
    source = find_model(args.model, args.wheels)
    prepared = prepared_from_onnx(source, work / "prepared.onnx")
    fp32_sess = bench.session(prepared, True)
    ref = bench.run(fp32_sess, held, 8, "x")[next(iter(o.name for o in fp32_sess.get_outputs()))]
    dataset = Dataset("photos+text", {"x": calib})
    rows: list[dict[str, Any]] = []
    paths: dict[str, Path] = {}

    def record(variant: str, path: Path, seconds: float) -> None:
        s = bench.session(path, not exact)
        out = bench.run(s, held, 8, "x")[s.get_outputs()[0].name]
        rows.append({"variant": variant, **metrics(ref, out), "seconds": seconds})
        paths[variant] = path
        r = rows[-1]
        print(
            f"| {variant} | {r['sqnr_db']:.2f} dB | {r['mask_iou']:.3f} | {r['mask_differs']:.4f} | "
            f"{seconds:.0f} |",
            flush=True,
        )

    print(f"held-out: {len(held)} images, text pixels (fp32 mask) {metrics(ref, ref)['text_pixels']:.1%}")
    print("| variant | prob. map SQNR | text-mask IoU | mask pixels differing | seconds |")
    print("|---|---|---|---|---|")
    if not exact:
        start = time.perf_counter()
        bench.ort_plain(prepared, work / "ort.onnx", calib, "x")
        record("ort quantize_static", work / "ort.onnx", time.perf_counter() - start)
    qc = bench.target_config(args.target)
    start = time.perf_counter()
    quantize_static_int8(prepared, work / "none.onnx", qc, dataset)
    record("qconvert --recover none", work / "none.onnx", time.perf_counter() - start)
    fp32_model = onnx.load(str(prepared))
    for combo in [s for s in args.steps.split(",") if s]:
        if combo == "cli":
            npz = work / "calibration.npz", work / "heldout.npz"
            path, seconds, verdict = bench.through_cli(args.target, str(source), *npz, None, work)
            print(f"  qconvert export --target {args.target}: {verdict}")
            record("qconvert export (cli)", path, seconds)
            continue
        steps, run_qc = bench.variant(combo, qc, fp32_model)
        start = time.perf_counter()
        model, _, _ = bench.apply_steps(fp32_model, steps, RecoveryInput(run_qc, dataset, work), 300.0)
        src, dest = work / f"{combo}-fp32.onnx", work / f"{combo}.onnx"
        onnx.save_model(model, str(src))
        quantize_static_int8(src, dest, run_qc, dataset)
        record(f"qconvert {combo}", dest, time.perf_counter() - start)
    if not args.no_nncf and not exact:
        for fast in (True, False) if args.nncf_full else (True,):
            dest = work / f"nncf-{'fast' if fast else 'full'}.onnx"
            seconds = bench.nncf_quantize(prepared, work / "calibration.npz", dest, fast, 900, "x")
            if seconds is not None:
                record(f"NNCF ({'fast' if fast else 'full'} bias correction)", dest, seconds)
    if exact:
        return
    one = held[:1]
    runners = {"fp32": lambda: fp32_sess.run(None, {"x": one})}
    for name, path in paths.items():
        s = bench.session(path, True)
        runners[name] = lambda s=s: s.run(None, {"x": one})
    latency = interleaved_latency(runners, args.repeats)
    for r in rows:
        r["latency_ratio"] = latency[r["variant"]].p50_ms / latency["fp32"].p50_ms
    print(f"\nlatency vs fp32 (batch 1, p50 {latency['fp32'].p50_ms:.1f} ms fp32):")
    for r in rows:
        print(f"  {r['variant']}: {r['latency_ratio']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "photos": sets.manifest()}, indent=1, default=float))


if __name__ == "__main__":
    main()
