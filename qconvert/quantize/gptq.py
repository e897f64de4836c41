"""GPTQ for 4-bit weight-only: round one input channel at a time and push each rounding error onto the
channels not yet rounded, weighted by the inverse Hessian of the layer's inputs (Frantar et al., 2022,
"GPTQ: Accurate Post-Training Quantization for Generative Pre-trained Transformers").

Why qconvert has its own: onnxruntime 1.32 ships GPTQ (`GPTQWeightOnlyQuantConfig`, from its vendored
copy of Intel Neural Compressor), and it runs, but its update step reads a *column* of the upper
triangular Cholesky factor of H^-1 (`Hinv1[i:, i]`, zero below the diagonal) where the algorithm needs
the *row*, so no error is ever propagated: its weights come out identical to round-to-nearest
(tests/unit/quantize/test_int4.py shows it). Here the update uses the row, as in the paper.

The result is written as the same MatMulNBits node onnxruntime's quantizers write: B packed two 4-bit
codes per byte as [N, blocks, block_size / 2], scales [N, blocks], zero points (asymmetric) packed two
per byte as [N, ceil(blocks / 2)]; symmetric weights have no zero-point input (the kernel uses 8).
Each block's scale and zero point follow onnxruntime's round-to-nearest rule (the block's range,
widened to include 0), computed when GPTQ reaches the block, so with no error to propagate the codes
equal onnxruntime's RTN codes exactly.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from qconvert.calibrate import Dataset

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

MAX_CODE = 15  # 4-bit codes are 0..15; symmetric codes are -8..7 stored with 8 added
SYMMETRIC_ZERO = 8
PERCENT_DAMP = 0.01  # dampening: this share of the mean Hessian diagonal is added to the diagonal
LAZY_ROWS = 128  # rows handled per lazy-update block (rounded up to a multiple of the block size)
HESSIAN_BATCH = 16  # calibration samples per session run while the inputs are collected


def block_params(rows: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scale, zero point) per column for one block of rows, by onnxruntime's round-to-nearest rule:
    asymmetric over [min(rows, 0), max(rows, 0)]; symmetric from the value of largest magnitude,
    mapped to code -8 (so its sign is kept)."""
    if symmetric:
        lo, hi = rows.min(axis=0), rows.max(axis=0)
        extreme = np.where(np.abs(hi) > np.abs(lo), hi, lo)
        scale = extreme / -8.0
        return np.where(scale == 0, 1.0, scale), np.full(rows.shape[1], float(SYMMETRIC_ZERO))
    lo, hi = np.minimum(rows.min(axis=0), 0.0), np.maximum(rows.max(axis=0), 0.0)
    scale = (hi - lo) / MAX_CODE
    zero = np.where(
        scale == 0,
        float(SYMMETRIC_ZERO),
        np.clip(np.round(-lo / np.where(scale == 0, 1, scale)), 0, MAX_CODE),
    )
    return np.where(scale == 0, 1.0, scale), zero


def _codes(w: np.ndarray, scale: np.ndarray, zero: np.ndarray, symmetric: bool) -> np.ndarray:
    if symmetric:
        return np.clip(np.round(w / scale), -8, 7) + SYMMETRIC_ZERO
    return np.clip(np.round(w / scale) + zero, 0, MAX_CODE)


def _inverse_cholesky(hessian: np.ndarray) -> np.ndarray:
    """U, upper triangular, with U^T U = (H + damp I)^-1. The damping starts at PERCENT_DAMP of the
    mean diagonal and grows tenfold while H + damp I is too ill-conditioned to factor."""
    mean_diag = float(np.mean(np.diag(hessian)))
    for attempt in range(4):
        damped = hessian + np.eye(len(hessian)) * PERCENT_DAMP * 10**attempt * mean_diag
        try:
            return np.linalg.cholesky(np.linalg.inv(damped)).T
        except np.linalg.LinAlgError:
            log.info("GPTQ: the input Hessian is ill-conditioned; dampening it %dx more", 10 ** (attempt + 1))
    raise np.linalg.LinAlgError("the input Hessian stays singular after dampening (inputs constant?)")


def gptq_codes(
    weight: np.ndarray, hessian: np.ndarray, block_size: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GPTQ-round `weight` [K, N] (rows are input channels) given the input Hessian [K, K]:
    (codes [K, N] in 0..15, scales [blocks, N], zero points [blocks, N]); value = scale * (code - zero)."""
    k, n = weight.shape
    w = weight.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    # inputs that are always 0 in the calibration data: weigh their rows as if independent (the
    # paper zeroes such rows, which would silently drop weights that other data may need)
    dead = np.diag(h) == 0
    h[dead, dead] = 1.0
    upper = _inverse_cholesky(h)
    blocks = -(-k // block_size)
    codes = np.zeros((k, n))
    scales, zeros = np.ones((blocks, n)), np.zeros((blocks, n))
    lazy = -(-LAZY_ROWS // block_size) * block_size
    for i1 in range(0, k, lazy):
        i2 = min(i1 + lazy, k)
        w1 = w[i1:i2].copy()
        err = np.zeros_like(w1)
        u1 = upper[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            if row % block_size == 0:  # a block starts: its range from the weights as they are now
                b = row // block_size
                scales[b], zeros[b] = block_params(w1[i : i + block_size], symmetric)
            b = row // block_size
            codes[row] = _codes(w1[i], scales[b], zeros[b], symmetric)
            rounded = scales[b] * (codes[row] - zeros[b])
            err[i] = (w1[i] - rounded) / u1[i, i]
            w1[i:] -= np.outer(u1[i, i:], err[i])  # row i of U: how the later inputs absorb the error
        w[i2:] -= upper[i1:i2, i2:].T @ err
    return codes.astype(np.uint8), scales, zeros


def pack_matmul_nbits(
    codes: np.ndarray, scales: np.ndarray, zeros: np.ndarray, block_size: int, symmetric: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """MatMulNBits' initializers from codes [K, N], scales and zero points [blocks, N]:
    (B [N, blocks, block_size/2] uint8, scales [N, blocks], zero points [N, ceil(blocks/2)] or None)."""
    k, n = codes.shape
    blocks = scales.shape[0]
    # rows past K (the last block's padding) hold the zero point's code, i.e. the value 0, as
    # onnxruntime's own quantizer writes them
    padded = np.repeat(zeros.astype(np.uint8), block_size, axis=0)
    padded[:k] = codes
    per_column = padded.T.reshape(n, blocks, block_size)
    packed = (per_column[..., 0::2] | (per_column[..., 1::2] << 4)).astype(np.uint8)
    if symmetric:
        return packed, scales.T.astype(np.float32), None
    zp = np.full((n, blocks + blocks % 2), SYMMETRIC_ZERO, np.uint8)
    zp[:, :blocks] = zeros.T.astype(np.uint8)
    zp_packed = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    return np.ascontiguousarray(packed), np.ascontiguousarray(scales.T.astype(np.float32)), zp_packed


def input_hessians(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    calibration: Dataset,
    on_batch: Callable[[int, int], None] | None = None,
) -> dict[str, np.ndarray]:
    """2/n * sum(x^T x) over every row x of each named fp32 tensor (the inputs of the MatMuls to
    quantize), with `model` run on the calibration data by onnxruntime's CPU provider."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    existing = {o.name for o in augmented.graph.output}
    augmented.graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in existing
    )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sums: dict[str, np.ndarray] = {}
    rows: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="qconvert-gptq-") as tmp:
        path = Path(tmp) / "inputs.onnx"
        onnx.save_model(augmented, str(path), save_as_external_data=augmented.ByteSize() > 2**30)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        done = 0
        for batch in calibration.batches(HESSIAN_BATCH):
            for name, value in zip(tensors, session.run(list(tensors), batch), strict=True):
                x = np.asarray(value, np.float64).reshape(-1, value.shape[-1])
                sums[name] = sums.get(name, 0.0) + x.T @ x
                rows[name] = rows.get(name, 0) + x.shape[0]
            done += len(next(iter(batch.values())))
            if on_batch is not None:
                on_batch(done, len(calibration))
    return {name: 2.0 * sums[name] / rows[name] for name in tensors}
