"""onnxruntime sessions from a provider list, and running a dataset through one."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert.calibrate import Dataset
from qconvert.targets import Provider

if TYPE_CHECKING:
    from qconvert.results import Manifest

log = logging.getLogger(__name__)

CPU = Provider("CPUExecutionProvider")
RUN_BATCH = 64


@dataclass(frozen=True)
class Session:
    """An onnxruntime session plus which provider it actually runs on."""

    inner: Any
    wanted: str  # the first provider the target asked for
    used: str  # the provider onnxruntime actually put first
    optimized: bool  # False: graph optimizations off, so Q/DQ nodes run exactly as written
    # the graph computes quantization ranges at run time over the whole batch (dynamic int8): each
    # sample's output then depends on the others in its batch, so `run` feeds one sample at a time
    batch_coupled: bool = False

    @property
    def fell_back(self) -> bool:
        return self.used != self.wanted

    def run(self, data: Dataset, batch: int = RUN_BATCH) -> list[np.ndarray]:
        """Run every sample; a fixed batch axis in the model is respected (last batch padded). A
        batch-coupled graph (`batch_coupled`) runs one sample at a time, as served at batch 1, so that
        no sample's output depends on the others (which per-sample confidence intervals assume)."""
        fixed = {i.name: i.shape[0] for i in self.inner.get_inputs() if isinstance(i.shape[0], int)}
        size = min(fixed.values()) if fixed else (1 if self.batch_coupled else batch)
        outs: list[list[np.ndarray]] = []
        for feeds in data.batches(size):
            n = len(next(iter(feeds.values())))
            if fixed and n < size:
                feeds = {
                    k: np.concatenate([v, np.repeat(v[-1:], size - n, axis=0)]) for k, v in feeds.items()
                }
            result = self.inner.run(None, feeds)
            outs.append([r[:n] for r in result])
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.inner.get_outputs()]


def available(provider: str) -> bool:
    import onnxruntime as ort

    return provider in ort.get_available_providers()


def make_session(
    path: Path, providers: Sequence[Provider] = (CPU,), threads: int | None = None, optimize: bool = True
) -> Session:
    """A session on the first of `providers` that is installed here, else on the CPU provider.

    With `optimize=False` onnxruntime runs the graph as written: QuantizeLinear/DequantizeLinear
    compute the quantized arithmetic exactly in float instead of being fused into the CPU's own
    integer kernels (which on CPUs without VNNI can saturate and differ from what other
    hardware computes)."""
    import onnxruntime as ort

    chosen = [p for p in providers if available(p.name)] or [CPU]
    if all(p.name != CPU.name for p in chosen):
        chosen.append(CPU)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    inner = ort.InferenceSession(
        str(path),
        sess_options=opts,
        providers=[p.name for p in chosen],
        provider_options=[dict(p.options) for p in chosen],
    )
    wanted = providers[0].name if providers else CPU.name
    stat = Path(path).stat()
    coupled = batch_coupled(str(path), stat.st_mtime_ns, stat.st_size)
    return Session(inner, wanted, inner.get_providers()[0], optimize, coupled)


# ops that compute their quantization range at run time over the whole input tensor, batch included
BATCH_COUPLED_OPS = frozenset({"DynamicQuantizeLinear", "DynamicQuantizeMatMul", "DynamicQuantizeLSTM"})


@functools.lru_cache(maxsize=64)
def batch_coupled(path: str, mtime_ns: int, size: int) -> bool:
    """Whether the graph at `path` (its weights not read) has an op in BATCH_COUPLED_OPS, subgraphs
    included. `mtime_ns` and `size` key the cache, so a rewritten file is read again."""
    import onnx

    def ops(graph: Any) -> Iterator[str]:
        for node in graph.node:
            yield node.op_type
            for attr in node.attribute:
                for sub in (*([attr.g] if attr.HasField("g") else []), *attr.graphs):
                    yield from ops(sub)

    model = onnx.load(path, load_external_data=False)
    return any(op in BATCH_COUPLED_OPS for op in ops(model.graph))


MANIFEST = "qconvert.json"


def read_manifest(out_dir: Path) -> Manifest:
    """The manifest of an artifact folder written by `qconvert export`: refused, naming the file, when
    it is not one (trust.check_manifest), and then read into the typed record (a missing or renamed
    entry is a SourceError naming qconvert.json, the entry and the key)."""
    import json

    from qconvert.errors import SourceError
    from qconvert.results import Manifest

    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise SourceError(f"{out_dir}: no {MANIFEST} here. Give a folder written by `qconvert export`.")
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise SourceError(f"{path}: not valid JSON ({e}).") from e
    from qconvert.trust import check_manifest

    check_manifest(path, data)
    return Manifest.from_json(data)


def manifest_providers(out_dir: Path, manifest: Manifest) -> list[Provider]:
    """The manifest's providers, in priority order, with path options made absolute (they are
    stored relative to the artifact folder): `*_path` (TensorRT's caches) and `*_dir` (OpenVINO's
    `cache_dir`)."""
    from qconvert.trust import check_provider_options

    base = Path(out_dir).resolve()
    for p in manifest.providers:  # never an option that loads a library
        check_provider_options(Path(out_dir) / MANIFEST, p.name, p.options)
    return [
        Provider(
            p.name,
            {
                k: str(base / v) if k.endswith(("_path", "_dir")) and v else str(v)
                for k, v in p.options.items()
            },
        )
        for p in manifest.providers
    ]


def load_session(out_dir: str | Path) -> Any:
    """An `onnxruntime.InferenceSession` for OUT_DIR/model.onnx, with the providers and options the
    manifest lists, in priority order. Providers not installed here are skipped with a warning."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    session = make_session(out / "model.onnx", manifest_providers(out, manifest))
    if session.fell_back:
        log.warning(
            "%s is not available here; %s runs %s instead", session.wanted, out / "model.onnx", session.used
        )
    return session.inner
