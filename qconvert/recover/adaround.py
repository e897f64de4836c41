"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Rounding each weight to the nearest grid point minimises each weight's own error, not the layer's
output error. AdaRound learns, per layer, whether each weight rounds down or up: with s the weight's
scale (exactly as onnxruntime will derive it, `weights.weight_grid`), the soft weight is

    W~ = s * (clip(floor(W / s) + h(V) + zp, qmin, qmax) - zp),
    h(V) = clip(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)     (the rectified sigmoid, zeta 1.1, gamma -0.1)

and V minimises || f(W x_fp) - f(W~ x_q) ||^2 / E_nearest + lam * mean(1 - |2 h(V) - 1| ** beta), beta
annealed from 20 to 2 after a warm-up (the regulariser drives every h(V) to 0 or 1). The
reconstruction term is in units of nearest rounding's error E_nearest and the regulariser is a mean
over the weights, so one lam (0.3) suits every layer; with the few hundred iterations a CPU budget
allows, Adam's rate is 3e-2 rather than the paper's 1e-3 over 10k+ iterations. x_q is the input the
layer really gets once the layers before it are quantized (their learned rounding included): the
partly rounded fp32 graph is re-quantized by the run's quantizer (`quantize_candidate`) every
`refresh_every` layers and the layer inputs are read from it (`activations.run_graph`); the target
uses the fp32 model's own input x_fp (the paper's asymmetric reconstruction), f is the layer's
following Relu/Clip when it has one. torch does the optimisation (Adam).

The result is a pre step: each weight is replaced by its on-grid value (q - zp) * s, except that the
element(s) at each channel's max|w| keep their exact fp32 value, so onnxruntime derives the same
scale and stores exactly the learned integers. Opt-in (slow), with progress (layers done, total) and a
time budget (`budget_seconds`): layers not reached when it is spent keep nearest rounding.
Symmetric weight grids only (per channel, or symmetric per tensor); others are left alone, noted.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx
from onnx import numpy_helper

from qconvert.recover.activations import run_graph
from qconvert.recover.base import (
    ROUNDING,
    Recovery,
    RecoveryInput,
    StepResult,
    keep_reference,
    quantize_candidate,
    reference_weight,
)
from qconvert.recover.weights import (
    max_elements,
    node_attribute,
    on_grid,
    quantize_to_grid,
    roundable_weights,
    weight_grid,
)
from qconvert.types import QuantizeConfig

log = logging.getLogger(__name__)

ZETA, GAMMA = 1.1, -0.1


@dataclass(frozen=True)
class Layer:
    node: onnx.NodeProto
    weight: str
    axis: int | None
    bias: str | None
    activation: tuple[float, float] | None  # the following Relu (0, inf) or Clip (min, max)


def _activation(model: onnx.ModelProto, node: onnx.NodeProto, inits: dict[str, np.ndarray]) -> Any:
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    if len(consumers) != 1 or node.output[0] in {o.name for o in model.graph.output}:
        return None
    after = consumers[0]
    if after.op_type == "Relu":
        return (0.0, float("inf"))
    if after.op_type == "Clip" and all(i in inits for i in after.input[1:3] if i) and len(after.input) == 3:
        return (float(inits[after.input[1]]), float(inits[after.input[2]]))
    return None


def adaroundable(model: onnx.ModelProto, qc: QuantizeConfig) -> tuple[list[Layer], list[str]]:
    """(layers AdaRound can learn, in graph order; notes on those it leaves alone): see
    `weights.roundable_weights`."""
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    found, notes = roundable_weights(model, qc, "adaround")
    layers = []
    for layer in found:
        node = layer.node
        bias = node.input[2] if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 else None
        layers.append(Layer(node, layer.weight, layer.axis, bias or None, _activation(model, node, arrays)))
    return layers, notes


def _bias(inits: dict[str, onnx.TensorProto], name: str | None) -> Any:
    """The layer's bias as a torch tensor (None: it has none)."""
    import torch

    return torch.from_numpy(numpy_helper.to_array(inits[name]).astype(np.float32)) if name else None


def _rectified_sigmoid(v: Any) -> Any:
    import torch

    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _forward(layer: Layer, x: Any, w: Any, b: Any) -> Any:
    import torch
    import torch.nn.functional as F

    node = layer.node
    if node.op_type == "Conv":
        pads = list(node_attribute(node, "pads", [0, 0, 0, 0]))
        if node_attribute(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
            raise ValueError("auto_pad convolutions are not supported")
        x = F.pad(x, (pads[1], pads[3], pads[0], pads[2]))
        return F.conv2d(
            x,
            w,
            b,
            stride=tuple(node_attribute(node, "strides", [1, 1])),
            dilation=tuple(node_attribute(node, "dilations", [1, 1])),
            groups=int(node_attribute(node, "group", 1)),
        )
    if node.op_type == "Gemm":
        y = x @ (w.T if node_attribute(node, "transB", 0) else w)
        return y if b is None else y + b
    return torch.matmul(x, w)


@dataclass
class _Learned:
    integers: np.ndarray
    error_nearest: float
    error_learned: float
    flipped: int
    error_float: float  # with the fp32 weights on the same (quantized) inputs


class AdaRound(Recovery):
    name: ClassVar[str] = "adaround"
    phase: ClassVar[str] = "pre"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[frozenset[str]] = frozenset({"qdq", "qoperator"})
    summary: ClassVar[str] = (
        "AdaRound: each layer's weight rounding (up or down) learned on calibration data to minimise its "
        "output error given the quantized layers before it (opt-in, time-budgeted)"
    )
    budget_seconds: ClassVar[float] = 300.0
    order: ClassVar[int] = ROUNDING

    def __init__(
        self,
        budget_seconds: float | None = None,
        iterations: int = 300,
        samples: int = 16,
        batch: int = 4,
        refresh_every: int = 6,
        lam: float = 0.3,
        lr: float = 3e-2,
        warmup: float = 0.2,
        seed: int = 0,
        threads: int = 1,
    ) -> None:
        if budget_seconds is not None:
            self.budget_seconds = budget_seconds  # type: ignore[misc]
        self.iterations, self.samples, self.batch = iterations, samples, batch
        self.refresh_every, self.lam, self.lr, self.warmup, self.seed = refresh_every, lam, lr, warmup, seed
        # torch's intra-op threads: small layers run many times faster on one thread than on two
        # contended ones
        self.threads = threads

    def why_not(self, qc: QuantizeConfig) -> str | None:
        if qc.mode not in ("static", "dynamic") or qc.bits != 8:
            return f"adaround applies to 8-bit static or dynamic quantization, not {qc.bits}-bit {qc.mode}"
        return super().why_not(qc)

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return self._run(fp32, inp)
        finally:
            torch.set_num_threads(before)

    def _run(self, fp32: onnx.ModelProto, inp: RecoveryInput) -> StepResult:
        assert inp.calibration is not None
        start = time.perf_counter()
        model = onnx.ModelProto()
        model.CopyFrom(fp32)
        layers, notes = adaroundable(model, inp.qc)
        if not layers:
            notes.append(
                "adaround: no Conv/Gemm/MatMul with a constant symmetric-grid weight; nothing changed"
            )
            return StepResult(model, False, tuple(notes), {"layers": {}})
        data = inp.calibration.subset(slice(0, min(self.samples, len(inp.calibration))))
        inits = {t.name: t for t in model.graph.initializer}
        details: dict[str, dict[str, float]] = {}
        done, stopped, layer_seconds, refresh_seconds = 0, False, 0.0, 0.0
        for first in range(0, len(layers), self.refresh_every):
            chunk = layers[first : first + self.refresh_every]
            # the next refresh (a quantization of the whole graph) and one layer must still fit
            if time.perf_counter() - start + refresh_seconds + layer_seconds > self.budget_seconds:
                stopped = True
                break
            began = time.perf_counter()
            inputs_q = self._layer_inputs(quantize_candidate(model, inp), chunk, data, quantized=True)
            inputs_fp = self._layer_inputs(fp32, chunk, data, quantized=False)
            refresh_seconds = time.perf_counter() - began
            for layer in chunk:
                began = time.perf_counter()
                if began - start + layer_seconds > self.budget_seconds:
                    stopped = True
                    break
                key = layer.node.name or layer.node.output[0]
                if key in inputs_q:
                    deadline = start + self.budget_seconds
                    current = numpy_helper.to_array(inits[layer.weight])
                    reference = reference_weight(inp, layer.weight, current)
                    learned, w_new = self._learn(
                        layer, inits, reference, inputs_fp[key], inputs_q[key], inp.qc, deadline
                    )
                    keep_reference(inp, layer.weight, current)
                    inits[layer.weight].CopyFrom(numpy_helper.from_array(w_new, layer.weight))
                    details[key] = {
                        "output_error_nearest": learned.error_nearest,
                        "output_error_learned": learned.error_learned,
                        "output_error_float_weight": learned.error_float,
                        "flipped": float(learned.flipped),
                    }
                done += 1
                layer_seconds = time.perf_counter() - began
                if inp.progress is not None:
                    inp.progress(done, len(layers))
            if stopped:
                break
        if stopped:
            notes.append(
                f"adaround: time budget of {self.budget_seconds:.0f} s spent after {done} of {len(layers)} "
                "layers; the rest keep nearest rounding"
            )
        notes.append(
            f"adaround: rounding learned for {len(details)} layer(s) in {time.perf_counter() - start:.0f} s"
        )
        extra = {"layers": details, "layers_total": len(layers), "budget_seconds": self.budget_seconds}
        return StepResult(model, bool(details), tuple(notes), extra)

    def _layer_inputs(
        self, graph: onnx.ModelProto, chunk: list[Layer], data: Any, quantized: bool
    ) -> dict[str, np.ndarray]:
        """{layer: its data input over `data`} from `graph` (the quantized graph's layer reads the
        dequantized input; a layer the quantizer left in float is skipped there)."""
        by_name = {n.name: n for n in graph.graph.node if n.name}
        producers = {o: n for n in graph.graph.node for o in n.output}
        wanted: dict[str, str] = {}
        for layer in chunk:
            key = layer.node.name or layer.node.output[0]
            node = by_name.get(layer.node.name) if layer.node.name else None
            if node is None:
                continue
            if quantized:
                weight = producers.get(node.input[1])
                if weight is None or weight.op_type != "DequantizeLinear":
                    continue
            wanted[key] = node.input[0]
        if not wanted:
            return {}
        tensors = sorted(set(wanted.values()))
        parts: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
        for values in run_graph(graph, data, tensors, batch_size=8):
            for t, v in values.items():
                parts[t].append(np.asarray(v, np.float32))
        return {k: np.concatenate(parts[t]) for k, t in wanted.items()}

    def _learn(
        self,
        layer: Layer,
        inits: dict[str, onnx.TensorProto],
        reference: np.ndarray,
        x_fp: np.ndarray,
        x_q: np.ndarray,
        qc: QuantizeConfig,
        deadline: float = float("inf"),
    ) -> tuple[_Learned, np.ndarray]:
        """The layer's learned integers and on-grid fp32 weight; the iterations stop at `deadline`
        (time.perf_counter), and the rounding is kept only where it beats nearest on the inputs. The
        target is the fp32 function: `reference`, the weight before any rounding step moved it."""
        import torch

        w = numpy_helper.to_array(inits[layer.weight]).astype(np.float32)
        grid = weight_grid(w, qc, layer.axis)
        nearest = quantize_to_grid(w, grid)
        b = _bias(inits, layer.bias)
        scale = torch.from_numpy(np.broadcast_to(grid.scale, w.shape).copy())
        zp = torch.from_numpy(np.broadcast_to(grid.zero_point, w.shape).astype(np.float32).copy())
        w_div = torch.from_numpy(w) / scale
        floor = torch.floor(w_div)
        rest = torch.clamp(w_div - floor, 0.01, 0.99)
        v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).clone().requires_grad_(True)
        fixed = torch.from_numpy(max_elements(w, grid))  # keep onnxruntime's scale
        near_t = torch.from_numpy((nearest - grid.zero_point).astype(np.float32))
        xf, xq = torch.from_numpy(x_fp), torch.from_numpy(x_q)
        act = layer.activation

        def apply(y: Any) -> Any:
            return y if act is None else torch.clamp(y, act[0], act[1])

        def soft_weight(h: Any) -> Any:
            q = torch.clamp(floor + h + zp, grid.qmin, grid.qmax) - zp
            return torch.where(fixed, near_t, q) * scale

        with torch.no_grad():
            target = apply(_forward(layer, xf, torch.from_numpy(reference.astype(np.float32)), b))
            denom = float(torch.mean(target**2)) + 1e-12

        def error(weight: Any) -> float:
            with torch.no_grad():
                return float(torch.mean((apply(_forward(layer, xq, weight, b)) - target) ** 2)) / denom

        error_nearest = error(near_t * scale)
        error_float = error(torch.from_numpy(w))  # the same inputs, weights not rounded: the floor
        optimizer = torch.optim.Adam([v], lr=self.lr)
        generator = torch.Generator().manual_seed(self.seed)
        n = xq.shape[0]
        warm = int(self.warmup * self.iterations)
        for step in range(self.iterations):
            if step % 10 == 0 and time.perf_counter() > deadline:
                log.info("adaround: %s stopped at iteration %d (time budget)", layer.node.name, step)
                break
            pick = torch.randint(0, n, (min(self.batch, n),), generator=generator)
            h = _rectified_sigmoid(v)
            out = apply(_forward(layer, xq[pick], soft_weight(h), b))
            # in units of nearest rounding's error, so lam weighs the regulariser the same on every layer
            loss = torch.mean((out - target[pick]) ** 2) / (denom * max(error_nearest, 1e-12))
            if step >= warm:
                beta = 20 + (2 - 20) * (step - warm) / max(1, self.iterations - warm)
                loss = loss + self.lam * torch.sum(1 - torch.abs(2 * h - 1) ** beta) / h.numel()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            hard = (_rectified_sigmoid(v) >= 0.5).float()
            learned_q = (
                torch.where(fixed, near_t + zp, torch.clamp(floor + hard + zp, grid.qmin, grid.qmax))
            ).numpy()
        error_learned = error(torch.from_numpy(learned_q - zp.numpy()) * scale)
        integers = learned_q.astype(np.int64)
        if error_learned >= error_nearest:  # never worse than nearest on the calibration inputs
            integers, error_learned = nearest, error_nearest
        w_new = on_grid(w, integers, grid)
        flipped = int(np.sum(integers != nearest))
        return _Learned(integers, error_nearest, error_learned, flipped, error_float), w_new


STEP = AdaRound()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
