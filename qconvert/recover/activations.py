"""Statistics of intermediate tensors over a dataset, collected in one streaming pass.

`collect(model, data, tensors, reducers)` exposes the named tensors as extra graph outputs, runs the
graph on onnxruntime's CPU provider with graph optimizations off (so a Q/DQ graph computes exactly the
arithmetic it specifies, on every CPU), and folds each batch into the reducers; no batch of activations
is kept. Every reducer works on float64 and treats axis 0 as the sample axis; the channel axis is 1
for images (N, C, H, W) and the last axis for features (N, F) or tokens (N, T, F, with
`channel_last=True`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from qconvert.calibrate import Dataset

Reducer = Callable[["Running", np.ndarray], None]
REDUCERS = ("mean_tensor", "channel_mean", "channel_absmax", "channel_min", "channel_max")


@dataclass
class Running:
    """Running statistics of one tensor. Only the reducers asked for are filled."""

    count: int = 0  # samples seen
    values: dict[str, np.ndarray] = field(default_factory=dict)
    channel_last: bool = False

    def update(self, x: np.ndarray, reducers: Iterable[str]) -> None:
        x = np.asarray(x, dtype=np.float64)
        n = x.shape[0]
        for name in reducers:
            new = _reduce(name, x, self.channel_last)
            old = self.values.get(name)
            if old is None:
                self.values[name] = new
            elif name in ("mean_tensor", "channel_mean"):  # running mean, weighted by samples
                self.values[name] = old + (new - old) * (n / (self.count + n))
            elif name in ("channel_absmax", "channel_max"):
                self.values[name] = np.maximum(old, new)
            else:
                self.values[name] = np.minimum(old, new)
        self.count += n


def _channel_view(x: np.ndarray, channel_last: bool) -> np.ndarray:
    """(samples*positions, channels)."""
    if x.ndim <= 1:
        return x.reshape(-1, 1)
    if x.ndim == 2 or channel_last:
        return x.reshape(-1, x.shape[-1])
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _reduce(name: str, x: np.ndarray, channel_last: bool = False) -> np.ndarray:
    if name == "mean_tensor":
        return x.mean(axis=0)
    flat = _channel_view(x, channel_last)
    if name == "channel_mean":
        return flat.mean(axis=0)
    if name == "channel_absmax":
        return np.abs(flat).max(axis=0)
    if name == "channel_min":
        return flat.min(axis=0)
    if name == "channel_max":
        return flat.max(axis=0)
    raise ValueError(f"unknown reducer {name!r}; valid: {', '.join(REDUCERS)}")


def with_outputs(model: onnx.ModelProto, tensors: Sequence[str]) -> onnx.ModelProto:
    """A copy of `model` whose graph also outputs `tensors` (types left to onnxruntime)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    present = {o.name for o in out.graph.output}
    for name in tensors:
        if name not in present:
            out.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return out


def run_graph(
    model: onnx.ModelProto,
    data: Dataset,
    tensors: Sequence[str],
    batch_size: int = 16,
    threads: int | None = None,
) -> Iterable[dict[str, np.ndarray]]:
    """Yield {tensor: batch values} for `tensors`, batch by batch, exact arithmetic on the CPU."""
    import onnxruntime as ort

    exposed = with_outputs(model, tensors)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory(prefix="qconvert-stats-") as tmp:
        # save to a file: models over 2 GB cannot be passed as bytes
        path = Path(tmp) / "exposed.onnx"
        large = exposed.ByteSize() > 1_800_000_000
        onnx.save_model(exposed, str(path), save_as_external_data=large)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in session.get_inputs()}
    for feed in data.batches(batch_size):
        values = session.run(list(tensors), {k: v for k, v in feed.items() if k in inputs})
        yield dict(zip(tensors, values, strict=True))


def collect(
    model: onnx.ModelProto,
    data: Dataset,
    tensors: Sequence[str],
    reducers: Sequence[str],
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    channel_last: bool = False,
) -> dict[str, Running]:
    """{tensor: Running} with `reducers` over all of `data`, in one pass."""
    stats = {t: Running(channel_last=channel_last) for t in tensors}
    total, done = len(data), 0
    for values in run_graph(model, data, tensors, batch_size):
        for name, x in values.items():
            stats[name].update(x, reducers)
        done += len(next(iter(values.values()))) if values else 0
        if progress is not None:
            progress(min(done, total), total)
    return stats
