"""Depthwise convolutions, the classic hard case for int8: qconvert vs the plain onnxruntime way.

    python benchmarks/bench_depthwise.py [--repeats 200] [--train-seconds 60] [--json out.json]

Trains (seeded, in-script, on 2 threads, at most --train-seconds) a small MobileNet-style CNN
(stride-2 stem conv, 5 inverted-residual blocks with depthwise 3x3 convs, ReLU6, global average pool,
linear; BatchNorm folded into the convs before export) on scikit-learn's digits upscaled to
3x32x32. Then, on this machine:

- fp32: qconvert's own fp32 export (reference.onnx)
- qconvert cpu: `qconvert export --target cpu`, once with --latency-batch 1 and once with 32
- qconvert cpu --auto: the same with --auto (keeps the most sensitive nodes in float if needed)
- ort static default: onnxruntime `quantize_static` with its defaults on reference.onnx,
  calibrated on the same 256 images through qconvert's `ort_reader`

Accuracy (500 labelled held-out images), top-1 agreement and SQNR against fp32 (logits), size vs
fp32, and p50 latency vs fp32 at batch 1 and 32, every variant timed interleaved in this process
on onnxruntime's CPU provider. The batch-1 column uses the --latency-batch 1 export and the
batch-32 column the --latency-batch 32 export (qconvert picks its Q/DQ format by timing at that
batch); accuracy, agreement and SQNR come from the batch-1 export.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import sys
import tempfile
import time
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

BATCHES = (1, 32)
SEED = 0
EPOCHS = 15  # the one-cycle schedule is laid out for this many; --train-seconds cuts it short

MODEL = '''
"""A small MobileNetV2-style CNN for 3x32x32 digits; weights from weights.pt next to this file."""
from pathlib import Path

import torch
from torch import nn

INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)


class ConvAct(nn.Module):
    def __init__(self, cin, cout, k=1, stride=1, groups=1, bn=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=True)
        self.bn = nn.BatchNorm2d(cout) if bn else nn.Identity()
        self.act = nn.ReLU6() if act else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand, bn=True):
        super().__init__()
        mid = cin * expand
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvAct(cin, mid, 1, bn=bn),
            ConvAct(mid, mid, 3, stride, groups=mid, bn=bn),  # depthwise
            ConvAct(mid, cout, 1, bn=bn, act=False),  # linear bottleneck
        )

    def forward(self, x):
        y = self.body(x)
        return x + y if self.residual else y


# (out channels, stride, expansion)
BLOCKS = ((16, 1, 1), (24, 2, 3), (24, 1, 3), (32, 2, 3), (48, 1, 3))


class MobileNetish(nn.Module):
    def __init__(self, bn=True):
        super().__init__()
        layers, c = [ConvAct(3, 16, 3, 2, bn=bn)], 16  # 32x32 -> 16x16
        for cout, stride, expand in BLOCKS:
            layers.append(InvertedResidual(c, cout, stride, expand, bn=bn))
            c = cout
        layers.append(ConvAct(c, 128, 1, bn=bn))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def build():
    model = MobileNetish(bn=False)
    model.load_state_dict(torch.load(Path(__file__).with_name("weights.pt"), weights_only=True))
    return model.eval()


def example_inputs():
    return (torch.zeros(1, 3, 32, 32),)
'''


def load_digits_32() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0  # (n, 8, 8) in [0, 1]
    x = np.kron(x, np.ones((1, 4, 4), np.float32))  # nearest upscale to 32x32
    x = (x - 0.5) / 0.5
    x = np.repeat(x[:, None], 3, axis=1)  # 3 channels
    return np.ascontiguousarray(x), digits.target.astype(np.int64)


def train(work: Path, x: np.ndarray, y: np.ndarray, seconds: float) -> tuple[float, int]:
    """Train the model with BatchNorm, fold BN into the convs, save the BN-free weights."""
    import importlib.util

    import torch
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    spec = importlib.util.spec_from_file_location("bench_depthwise_model", work / "model.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.MobileNetish(bn=True)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=1e-4)
    epochs = EPOCHS
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=5e-3, total_steps=epochs * ((len(x) + 63) // 64))
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    gen = torch.Generator().manual_seed(SEED)
    start, done = time.perf_counter(), 0
    model.train()
    for _ in range(epochs):
        if time.perf_counter() - start > seconds:
            break
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        done += 1
    model.eval()
    folded = mod.MobileNetish(bn=False).eval()
    for src, dst in zip(model.modules(), folded.modules(), strict=True):
        if isinstance(src, mod.ConvAct):
            dst.conv = fuse_conv_bn_eval(src.conv, src.bn)
    folded.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():  # folding must not change the function
        drift = (model(xt[:64]) - folded(xt[:64])).abs().max().item()
    assert drift < 1e-3, drift
    torch.save(folded.state_dict(), work / "weights.pt")
    return time.perf_counter() - start, done


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--train-seconds", type=float, default=60.0)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("torch").setLevel(logging.ERROR)
    import onnxruntime
    from onnxruntime.quantization import quantize_static

    x, y = load_digits_32()
    order = np.random.default_rng(SEED).permutation(len(x))
    held_idx, train_idx = order[:500], order[500:]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model.py").write_text(MODEL)
        train_s, epochs = train(work, x[train_idx], y[train_idx], args.train_seconds)
        calib_path, held_path = work / "calib.npz", work / "heldout.npz"
        np.savez(calib_path, input=x[train_idx[:256]])
        np.savez(held_path, input=x[held_idx], labels=y[held_idx])
        source = f"{work / 'model.py'}:build"

        runs, export_s = {}, {}
        for auto in (False, True):
            for b in BATCHES:
                cfg = RunConfig(
                    source=source,
                    target="cpu",
                    calibration=str(calib_path),
                    data=str(held_path),
                    out_dir=work / f"q-auto{int(auto)}-b{b}",
                    latency_batch=b,
                    auto=auto,
                )
                t0 = time.perf_counter()
                runs[(auto, b)] = export(cfg)
                export_s[(auto, b)] = time.perf_counter() - t0

        fp32_path = runs[(False, 1)].out_dir / "reference.onnx"
        ort_path = work / "ort_static.onnx"
        calib = Dataset(str(calib_path), {"input": x[train_idx[:256]]})
        quantize_static(str(fp32_path), str(ort_path), ort_reader(calib))  # onnxruntime's defaults

        held = Dataset(str(held_path), {"input": x[held_idx]}, y[held_idx])
        variants = {
            "qconvert cpu": {b: runs[(False, b)].out_dir / "model.onnx" for b in BATCHES},
            "qconvert cpu --auto": {b: runs[(True, b)].out_dir / "model.onnx" for b in BATCHES},
            "ort static default": dict.fromkeys(BATCHES, ort_path),
        }
        fp32_session = make_session(fp32_path)
        reference = fp32_session.run(held)[0]
        fp32_acc = float((reference.argmax(1) == held.labels).mean())

        lat = {}
        for b in BATCHES:
            feed = {"input": x[held_idx[:b]]}
            paths = {"fp32": fp32_path, **{k: v[b] for k, v in variants.items()}}
            sessions = {k: make_session(p) for k, p in paths.items()}
            lat[b] = interleaved_latency(
                {k: (lambda s=s, feed=feed: s.inner.run(None, feed)) for k, s in sessions.items()},
                args.repeats,
            )

        rows = []
        for name, paths in variants.items():
            logits = make_session(paths[1]).run(held)[0]
            m = compare(reference, logits)
            rows.append(
                {
                    "variant": name,
                    "accuracy": float((logits.argmax(1) == held.labels).mean()),
                    "top1_agreement": m["top1_agreement"],
                    "sqnr_db": m["sqnr_db"],
                    "size_ratio": paths[1].stat().st_size / fp32_path.stat().st_size,
                    **{f"p50_b{b}_ms": lat[b][name].p50_ms for b in BATCHES},
                    **{f"ratio_b{b}": lat[b][name].p50_ms / lat[b]["fp32"].p50_ms for b in BATCHES},
                    "same_graph_b1_b32": sha(paths[1]) == sha(paths[32]),
                }
            )

        print(
            f"onnxruntime {onnxruntime.__version__}, {platform.processor() or platform.machine()}, "
            f"{os.cpu_count()} cores, CPUExecutionProvider, {args.repeats} interleaved repeats; "
            f"trained {epochs} epochs in {train_s:.0f} s; 500 held-out, 256 calibration images\n"
        )
        print(
            f"fp32 accuracy: {100 * fp32_acc:.2f}% (fp32 p50: batch 1 {lat[1]['fp32'].p50_ms:.3f} ms, "
            f"batch 32 {lat[32]['fp32'].p50_ms:.2f} ms)\n"
        )
        print(
            "| variant | accuracy | top-1 agree | SQNR dB | size vs fp32 | p50 b=1 | vs fp32 | p50 b=32 | vs fp32 |\n"
            "|---|---|---|---|---|---|---|---|---|"
        )
        for r in rows:
            print(
                f"| {r['variant']} | {100 * r['accuracy']:.2f}% | {100 * r['top1_agreement']:.1f}% | "
                f"{r['sqnr_db']:.1f} | {r['size_ratio']:.2f}x | {r['p50_b1_ms']:.3f} ms | {r['ratio_b1']:.2f}x | "
                f"{r['p50_b32_ms']:.2f} ms | {r['ratio_b32']:.2f}x |"
            )
        print()
        for (auto, b), run in runs.items():
            rep = run.report
            fb = rep.get("fallback")
            fb = fb or {}
            if not fb.get("needed", True):
                kept = "none (all-int8 passed)"
            elif fb.get("passed"):
                kept = f"{fb.get('kept_float')} (shipped)"
            else:
                kept = f"{fb.get('kept_float')} tried, still failed, all-int8 shipped: {fb.get('reason')}"
            print(
                f"- export {'--auto ' if auto else ''}--latency-batch {b}: passed={run.passed}, "
                f"{export_s[(auto, b)]:.0f} s, qconvert's own latency ratio {rep['latency']['ratio_p50']:.2f}x, "
                f"float between Q/DQ: {rep['ops']['float_between_qdq'] or 'none'}"
                + (f", --auto kept float: {kept}" if auto else "")
            )
        for r in rows:
            if not r["same_graph_b1_b32"]:
                print(f"- {r['variant']}: the batch-1 and batch-32 exports chose different graphs")
        if args.json:
            args.json.write_text(json.dumps({"fp32_accuracy": fp32_acc, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
