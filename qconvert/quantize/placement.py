"""Where a static int8 graph gets its Q/DQ pairs (`--placement`).

- `all`: every op onnxruntime's quantizer takes (its own default): each Add, Mul, Div, Clip, pooling
  and resize of the graph reads and writes 8-bit tensors.
- `compute`: only the compute ops (Conv, ConvTranspose, Gemm, MatMul), their inputs and their
  outputs: integer kernels end to end (QLinearConv on onnxruntime's CPU provider), elementwise ops in
  float between them.
- `inputs`: only the inputs of the compute ops; their outputs, and every elementwise op, stay float
  unless a quantized op reads them. This is the placement TensorRT's Q/DQ rules ask for (quantize the
  inputs of weighted layers; the engine fuses the pointwise ops after them into the kernel) and the
  one OpenVINO's low-precision transformations start from; on onnxruntime's CPU provider a compute op
  whose output is float runs in fp32 after a DequantizeLinear, so it is slower there.

A net whose activations are products (hard-swish `x * relu6(x + 3) / 6`, swish, squeeze-excite's
gate) loses most of its int8 accuracy in those elementwise ops' own 8-bit outputs, which `all`
quantizes: on PaddleOCR's PP-OCRv4 detector (README, "Measured on real trained networks") `all` puts
293 Q/DQ pairs where `inputs` puts 59. recover/defaults.py chooses per family and target; where it
lists several placements (`compute` or `all` on cpu), `race` measures them on calibration samples.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI's choices read PLACEMENTS: no onnx import for --help
    import numpy as np
    import onnx

    from qconvert.calibrate import Dataset
    from qconvert.targets import Provider
    from qconvert.types import QuantizeConfig

PLACEMENTS = ("all", "compute", "inputs")
COMPUTE_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_OUTPUTS_FLOAT = "OpTypesToExcludeOutputQuantization"


def compute_nodes(model: onnx.ModelProto) -> tuple[str, ...]:
    """The names of the graph's compute ops (COMPUTE_OPS), in graph order."""
    return tuple(n.name for n in model.graph.node if n.op_type in COMPUTE_OPS and n.name)


def placed(qc: QuantizeConfig, model: onnx.ModelProto, placement: str) -> QuantizeConfig:
    """`qc` with the Q/DQ pairs of `placement` on `model`. A selection the settings already hold
    (--include) is narrowed to its compute ops, never widened; excluded nodes stay out."""
    if placement == "all":
        return qc
    qc = replace(qc, nodes_to_include=tuple(n for n in compute_nodes(model) if qc.selects(n)))
    if placement == "inputs":
        extra = dict(qc.extra_options)
        kinds = tuple(dict.fromkeys((*extra.get(_OUTPUTS_FLOAT, ()), *COMPUTE_OPS)))  # type: ignore[misc]
        qc = replace(
            qc,
            extra_options=(
                *((k, v) for k, v in qc.extra_options if k != _OUTPUTS_FLOAT),
                (_OUTPUTS_FLOAT, kinds),
            ),
        )
    return qc


def takes(qc: QuantizeConfig, placement: str) -> bool:
    """Whether a candidate of format `qc.format` can hold `placement`: `inputs` leaves the compute
    ops' outputs float, which only the Q/DQ format can express (QOperator kernels write int8)."""
    return placement != "inputs" or qc.format == "qdq"


def gated(model: onnx.ModelProto) -> bool:
    """Whether the net's activations are products of two computed tensors (hard-swish, swish,
    squeeze-excite's gate: a Mul neither of whose inputs is a constant) or HardSwish ops, where `all`
    rounds each factor and each product to 8 bits."""
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for n in model.graph.node:
        if n.op_type == "HardSwish":
            return True
        if n.op_type == "Mul" and len(n.input) == 2 and not constants & set(n.input):
            return True
    return False


PROBE_SAMPLES = 32  # calibration samples to set each placement's ranges, and as many more to score it
LATENCY_MARGIN = 1.10  # the placement with the better SQNR is kept unless it is over 10% slower


@dataclass(frozen=True)
class Measured:
    """One placement measured on calibration samples: the worst output's SQNR against fp32 and the
    p50 latency (None where the latency does not decide: the target's kernels are not this CPU's)."""

    placement: str
    sqnr_db: float
    p50_ms: float | None

    def as_json(self) -> dict[str, object]:
        return {"placement": self.placement, "sqnr_db": self.sqnr_db, "p50_ms": self.p50_ms}


def choose_measured(measured: Sequence[Measured], margin: float = LATENCY_MARGIN) -> Measured:
    """The placement with the best SQNR, unless it is more than `margin` times slower than the fastest
    (then the fastest); ties go to the first listed (the family's default)."""
    best = max(measured, key=lambda m: m.sqnr_db)  # max keeps the first of equals
    timed = [m for m in measured if m.p50_ms is not None]
    if best.p50_ms is None or not timed:
        return best
    fastest = min(timed, key=lambda m: m.p50_ms or math.inf)
    return fastest if best.p50_ms > margin * (fastest.p50_ms or math.inf) else best


def race(
    prepared: Path,
    candidates: Mapping[str, QuantizeConfig],
    calibration: Dataset,
    work: Path,
    providers: Sequence[Provider],
    time: Callable[[Mapping[str, Callable[[], object]]], Mapping[str, float]] | None,
    batch: int = 1,
) -> list[Measured]:
    """Each placement's QuantizeConfig (`candidates`, the family's default first) quantizes the
    prepared graph with ranges from the first PROBE_SAMPLES calibration samples and is scored on the
    next ones (the same ones where there are too few): SQNR of each output against the fp32 graph,
    the worst output counting. `time` (runners -> p50 ms, each runner one run of `batch` scoring
    samples) times them where latency should decide.
    Held-out data is never read. An alternative that fails to quantize or run is left out; the
    first must work."""
    from qconvert.quantize import QUANTIZERS
    from qconvert.runtime import make_session
    from qconvert.validation.metrics import compare

    n = len(calibration)
    fit = calibration.subset(slice(0, min(PROBE_SAMPLES, n if n < 4 else n // 2)))
    score = calibration.subset(slice(len(fit), len(fit) + PROBE_SAMPLES)) if n >= 4 else fit
    one_batch = next(iter(score.batches(batch)))

    def outputs(path: Path) -> tuple[list[np.ndarray], Callable[[], object]]:
        session = make_session(path, providers)  # Session.run keeps a fixed batch axis
        return session.run(score), lambda: session.inner.run(None, one_batch)

    reference, _ = outputs(prepared)
    scored: dict[str, float] = {}
    runners: dict[str, Callable[[], object]] = {}
    for i, (placement, qc) in enumerate(candidates.items()):
        dest = work / f"placement-{placement}.onnx"
        try:
            QUANTIZERS.get(qc.mode)(prepared, dest, qc, fit, None)
            got, runners[placement] = outputs(dest)
        except Exception:
            if i == 0:
                raise
            continue
        sqnr = [compare(r, g, classes=False)["sqnr_db"] for r, g in zip(reference, got, strict=True)]
        scored[placement] = min(sqnr)
    timed = time(runners) if time is not None else {}
    return [Measured(p, db, timed.get(p)) for p, db in scored.items()]
