"""onnxruntime sessions from a provider list, and running a dataset through one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibrate import Dataset
from qconvert.targets import Provider

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

    @property
    def fell_back(self) -> bool:
        return self.used != self.wanted

    def run(self, data: Dataset, batch: int = RUN_BATCH) -> list[np.ndarray]:
        """Run every sample; a fixed batch axis in the model is respected (last batch padded)."""
        fixed = {i.name: i.shape[0] for i in self.inner.get_inputs() if isinstance(i.shape[0], int)}
        size = min(fixed.values()) if fixed else batch
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
    return Session(inner, wanted, inner.get_providers()[0], optimize)


MANIFEST = "qconvert.json"


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The manifest of an artifact folder written by `qconvert export`."""
    import json

    from qconvert.errors import SourceError

    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise SourceError(f"{out_dir}: no {MANIFEST} here. Give a folder written by `qconvert export`.")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except ValueError as e:
        raise SourceError(f"{path}: not valid JSON ({e}).") from e
    from qconvert.trust import check_manifest

    check_manifest(path, manifest)
    return manifest


def manifest_providers(out_dir: Path, manifest: dict[str, Any]) -> list[Provider]:
    """The manifest's providers, in priority order, with path options made absolute (they are
    stored relative to the artifact folder): `*_path` (TensorRT's caches) and `*_dir` (OpenVINO's
    `cache_dir`)."""
    from qconvert.trust import check_provider_options

    base = Path(out_dir).resolve()
    for p in manifest.get("providers", []):  # never an option that loads a library
        check_provider_options(Path(out_dir) / MANIFEST, str(p.get("name")), p.get("options", {}))
    return [
        Provider(
            p["name"],
            {
                k: str(base / v) if k.endswith(("_path", "_dir")) and v else str(v)
                for k, v in p.get("options", {}).items()
            },
        )
        for p in manifest.get("providers", [])
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
