"""The per-layer precision rewrites on real onnxruntime Q/DQ graphs: 16-bit Q/DQ on the same range as
the quantizer's 8-bit one, fp32 layers that give back the fp32 function, fp16 layers whose emulated
form computes what the fp16 stand-in of the explicit graph computes."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from _graphs import conv_net, images, run
from onnx import TensorProto, helper

from qconvert.artifacts import save_onnx
from qconvert.calibrate import Dataset
from qconvert.quantize.float16 import emulate_fp16
from qconvert.recover import precision
from qconvert.recover.base import RecoveryInput, quantize_candidate
from qconvert.targets import TARGETS


def _qc(target: str):  # type: ignore[no-untyped-def]
    t = TARGETS.get(target)
    qc = t.bind().quantize_config(8, "static", "minmax")
    return replace(qc, format="qdq", reduce_range=False) if target == "cpu" else qc


def _quantized(target: str, tmp_path: Path, outlier: float = 1.0) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    fp32 = conv_net(outlier)
    inp = RecoveryInput(qc=_qc(target), calibration=Dataset("c", {"x": images(1, 32)}), work=tmp_path)
    return fp32, quantize_candidate(fp32, inp)


@pytest.mark.parametrize(
    ("zp_type", "scale", "zero", "symmetric"),
    [
        (TensorProto.UINT8, 0.02, 37, False),
        (TensorProto.INT8, 0.05, -11, False),
        (TensorProto.INT8, 0.1, 0, True),
    ],
)
def test_the_16_bit_pair_covers_the_8_bit_range(
    zp_type: int, scale: float, zero: int, symmetric: bool
) -> None:
    np_type = helper.tensor_dtype_to_np_dtype(zp_type)
    s16, zp16, wide = precision.widened(np.float32(scale), np.array(zero, np_type), zp_type, symmetric)
    lo8, hi8 = (-127, 127) if symmetric else (np.iinfo(np_type).min, np.iinfo(np_type).max)
    wide_np = helper.tensor_dtype_to_np_dtype(wide)
    lo16, hi16 = (-32767, 32767) if symmetric else (np.iinfo(wide_np).min, np.iinfo(wide_np).max)
    assert wide in (TensorProto.UINT16, TensorProto.INT16) and zp16.dtype == wide_np
    # the same real interval, 257 (or 258) times finer
    assert (lo16 - float(zp16)) * float(s16) == pytest.approx((lo8 - zero) * scale, rel=1e-5, abs=1e-6)
    assert (hi16 - float(zp16)) * float(s16) == pytest.approx((hi8 - zero) * scale, rel=1e-5, abs=1e-6)
    assert 250 < scale / float(s16) < 260


def test_every_layer_in_fp32_gives_back_the_fp32_function(tmp_path: Path) -> None:
    fp32, quantized = _quantized("cpu", tmp_path)
    options = precision.raisable(quantized, ("a16w8", "fp32"))
    assert {"conv1", "conv2", "add", "gemm"} <= set(options)
    raised = precision.apply(quantized, fp32, dict.fromkeys(options, "fp32"))
    onnx.checker.check_model(raised)
    x = images(2, 16)
    assert np.abs(run(quantized, x) - run(fp32, x)).max() > 1e-3  # int8 is visibly lossy here
    np.testing.assert_allclose(run(raised, x), run(fp32, x), rtol=1e-5, atol=1e-5)
    assert not any(n.op_type == "QuantizeLinear" for n in raised.graph.node)


def test_a16w8_reads_16_bit_activations_and_loses_less(tmp_path: Path) -> None:
    # an outlier channel makes the step of conv1's 8-bit output far too coarse for conv2's input
    fp32, quantized = _quantized("cpu", tmp_path, outlier=1000.0)
    raised = precision.apply(quantized, fp32, {"conv2": "a16w8"})
    onnx.checker.check_model(raised)
    conv2 = next(n for n in raised.graph.node if n.name == "conv2")
    producer = {o: n for n in raised.graph.node for o in n.output}
    reader = producer[conv2.input[0]]
    assert reader.op_type == "DequantizeLinear" and reader.domain == "com.microsoft"
    zp = next(t for t in raised.graph.initializer if t.name == reader.input[2])
    assert zp.data_type == TensorProto.UINT16
    assert producer[conv2.input[1]].op_type == "DequantizeLinear"  # weights stay int8
    x = images(3, 16)
    ref = run(fp32, x)
    err_int8 = np.abs(run(quantized, x) - ref).mean()
    assert np.abs(run(raised, x) - ref).mean() < 0.2 * err_int8  # its int8 weights still lose some
    # the cpu target's rules take it once the graph says which layer is a16w8
    qc = replace(_qc("cpu"), layer_formats=(("conv2", "a16w8"),))
    assert TARGETS.get("cpu").graph_violations(raised, qc) == []
    assert TARGETS.get("cpu").graph_violations(raised, _qc("cpu"))  # ... and only then


def test_fp16_emulated_matches_the_stand_in_of_the_explicit_graph(tmp_path: Path) -> None:
    fp32, quantized = _quantized("tensorrt", tmp_path)
    explicit = precision.apply(quantized, fp32, {"conv2": "fp16", "gemm": "fp16"})
    onnx.checker.check_model(explicit)
    conv2 = next(n for n in explicit.graph.node if n.name == "conv2")
    weight = next(t for t in explicit.graph.initializer if t.name == conv2.input[1])
    assert weight.data_type == TensorProto.FLOAT16
    emulated = precision.apply(quantized, fp32, {"conv2": "fp16", "gemm": "fp16"}, emulate=True)
    stand_in = emulate_fp16(save_onnx(explicit, tmp_path / "explicit.onnx"), tmp_path / "stand_in.onnx")
    x = images(4, 16)
    np.testing.assert_array_equal(run(emulated, x), run(stand_in, x))
    # the tensorrt rules take a Q/DQ graph with fp16 layers when trt_fp16_enable is on
    trt = TARGETS.get("tensorrt")
    assert trt.provider_violations(explicit, trt.bind().providers([])) == []
    off = trt.bind({"fp16": "false"}).providers([])
    assert any("fp16=true" in v.reason for v in trt.provider_violations(explicit, off))
