"""Latency, throughput, size and peak memory, for several models on the same inputs.

Latency is measured in one process with the models interleaved; peak memory in child processes,
one per model, against a baseline child (see `peak_memory`)."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qconvert.results import Timing
from qconvert.settings import BenchmarkConfig

if TYPE_CHECKING:
    from qconvert.calibrate import ModelInput
    from qconvert.runtime import Session
    from qconvert.targets import Provider


def interleaved_latency(
    runners: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 5
) -> dict[str, Timing]:
    """Time each runner `repeats` times, interleaving them (order rotated every round) so that
    drift in machine load hits all of them alike."""
    names = list(runners)
    for _ in range(warmup):
        for name in names:
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        rotated = names[i % len(names) :] + names[: i % len(names)]
        for name in rotated:
            start = time.perf_counter()
            runners[name]()
            times[name].append((time.perf_counter() - start) * 1000)
    return {
        n: Timing(
            p50_ms=float(np.percentile(t, 50)),
            p90_ms=float(np.percentile(t, 90)),
            mean_ms=float(np.mean(t)),
            runs=len(t),
        )
        for n, t in times.items()
    }


# --- `qconvert benchmark`: several models on the same inputs ----------------------------------

MEMORY_RUNS = 5  # runs in each memory probe after creating the session
RANDOM_SEED = 0
_PROBE = "from qconvert.benchmark import _probe; _probe()"
_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "ConvInteger",
        "MatMulInteger",
        "MatMulNBits",
        "QGemm",
        "DynamicQuantizeMatMul",
        "QAttention",
    }
)
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
}


@dataclass(frozen=True)
class ModelBenchmark:
    """One model's figures. `peak_memory_bytes` is the increase in peak RSS over a baseline process
    (see `BenchmarkResult.memory_method`); None when memory was not measured."""

    label: str
    path: str
    precision: str
    size_bytes: int
    wanted_provider: str
    provider: str
    batch: int
    latency: Timing
    peak_rss_bytes: int | None
    peak_memory_bytes: int | None

    @property
    def throughput(self) -> float:
        """Samples per second at the p50 latency."""
        return self.batch / (self.latency.p50_ms / 1000)

    def as_json(self) -> dict[str, object]:
        return {
            "label": self.label,
            "path": self.path,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "wanted_provider": self.wanted_provider,
            "provider": self.provider,
            "batch": self.batch,
            "latency": self.latency.to_json(),
            "throughput_samples_per_s": self.throughput,
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


@dataclass(frozen=True)
class BenchmarkResult:
    """Every model measured on the same inputs; `models[0]` is MODEL, `models[1]` (if any) the one
    it is compared against."""

    models: tuple[ModelBenchmark, ...]
    batch: int
    repeats: int
    warmup: int
    threads: int | None
    inputs: str  # "random" or "data"
    inputs_description: str
    input_shapes: dict[str, list[int]]
    latency_method: str
    memory_method: str | None
    memory_baseline_rss_bytes: int | None
    notes: tuple[str, ...] = ()

    @property
    def slower(self) -> str | None:
        """The flag line when MODEL is slower than the model it is compared against, else None."""
        if len(self.models) < 2:
            return None
        return slower_flag(self.models[0], self.models[1])

    def as_json(self) -> dict[str, object]:
        return {
            "batch": self.batch,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "threads": self.threads,
            "inputs": self.inputs,
            "inputs_description": self.inputs_description,
            "input_shapes": self.input_shapes,
            "latency_method": self.latency_method,
            "memory_method": self.memory_method,
            "memory_baseline_rss_bytes": self.memory_baseline_rss_bytes,
            "models": [m.as_json() for m in self.models],
            "slower": self.slower,
            "notes": list(self.notes),
        }


def slower_flag(candidate: ModelBenchmark, baseline: ModelBenchmark) -> str | None:
    """A plain line when `candidate`'s p50 latency is above `baseline`'s, else None."""
    ratio = candidate.latency.p50_ms / baseline.latency.p50_ms
    if ratio <= 1.0:
        return None
    where = (
        candidate.provider
        if candidate.provider == baseline.provider
        else f"{candidate.provider} / {baseline.provider}"
    )
    what = (
        "the quantized model is slower than fp32"
        if baseline.precision == "fp32" and candidate.precision != "fp32"
        else f"{candidate.label} is slower than {baseline.label}"
    )
    return (
        f"{what} on {where}: {candidate.label} ({candidate.precision}) p50 {candidate.latency.p50_ms:.3f} ms "
        f"vs {baseline.label} ({baseline.precision}) {baseline.latency.p50_ms:.3f} ms, {ratio:.2f}x, at "
        f"batch {candidate.batch}"
    )


def precision_of(path: Path) -> str:
    """What the graph computes in: 'int8 (Q/DQ)', 'int8 (QOperator)', 'int8 (integer ops)', 'int4 ...',
    'fp16', 'bf16' or 'fp32', read from its op types and initializer types."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    graphs = [model.graph, *(f for f in model.functions)]
    ops = {n.op_type for g in graphs for n in g.node}
    types = {t.data_type for t in model.graph.initializer}
    tp = onnx.TensorProto
    if (
        "QuantizeLinear" in ops
        or "DequantizeLinear" in ops
        or ops & _QUANTIZED_OPS
        or any(op.startswith("QLinear") for op in ops)
    ):
        bits = (
            "int4"
            if types & {tp.INT4, tp.UINT4} or "MatMulNBits" in ops
            else "int16"
            if types & {tp.INT16, tp.UINT16} and not types & {tp.INT8, tp.UINT8}
            else "int8"
        )
        if any(op.startswith("QLinear") for op in ops) or "QGemm" in ops:
            style = "QOperator"
        elif ops & {"ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}:
            style = "integer ops"
        elif "MatMulNBits" in ops:
            style = "MatMulNBits"
        else:
            style = "Q/DQ"
        return f"{bits} ({style})"
    if tp.FLOAT16 in types:
        return "fp16"
    if tp.BFLOAT16 in types:
        return "bf16"
    return "fp32"


def _peak_rss() -> int | None:
    """This process's peak resident set size in bytes (Linux VmHWM, else getrusage)."""
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    try:
        import resource
        import sys
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def _probe() -> None:
    """Child-process entry point of `peak_memory`: argv[1] is a JSON spec, stdin the inputs (.npz).
    With an empty path it is the baseline: the same imports and inputs, no session."""
    import io
    import json
    import sys

    import onnxruntime  # noqa: F401  (the baseline pays for the import too)

    from qconvert.runtime import make_session
    from qconvert.targets import Provider

    spec = json.loads(sys.argv[1])
    with np.load(io.BytesIO(sys.stdin.buffer.read()), allow_pickle=False) as z:
        feeds = {k: z[k] for k in z.files}
    if spec["path"]:
        providers = [Provider(p["name"], p["options"]) for p in spec["providers"]]
        session = make_session(Path(spec["path"]), providers, threads=spec["threads"])
        for _ in range(spec["runs"]):
            session.inner.run(None, feeds)
    sys.stdout.write(json.dumps({"peak_rss_bytes": _peak_rss()}) + "\n")


def peak_memory(
    models: Mapping[str, tuple[Path, Sequence[Provider]]],
    feeds: Mapping[str, np.ndarray],
    threads: int | None = None,
    runs: int = MEMORY_RUNS,
) -> tuple[int | None, dict[str, int | None]]:
    """(baseline peak RSS, {name: peak RSS}) in bytes, each from its own child process: a model's
    child imports onnxruntime, reads `feeds`, creates the session and runs it `runs` times; the
    baseline child does the same except the session and the runs. The children run concurrently."""
    import io
    import json
    import subprocess
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from qconvert.errors import InternalError

    buffer = io.BytesIO()
    np.savez(buffer, **feeds)  # type: ignore[arg-type]  # numpy types **kwds like allow_pickle
    payload = buffer.getvalue()
    specs: dict[str | None, dict[str, object]] = {
        None: {"path": "", "providers": [], "threads": threads, "runs": 0},
        **{
            name: {
                "path": str(path),
                "providers": [p.as_json() for p in providers],
                "threads": threads,
                "runs": runs,
            }
            for name, (path, providers) in models.items()
        },
    }

    def measure(spec: dict[str, object]) -> int | None:
        proc = subprocess.run(
            [sys.executable, "-c", _PROBE, json.dumps(spec)],
            input=payload,
            capture_output=True,
            timeout=600,
            check=False,
        )
        if proc.returncode != 0:
            tail = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
            raise InternalError(f"the memory probe for {spec['path'] or 'the baseline'} failed: {tail}")
        value = json.loads(proc.stdout.decode().strip().splitlines()[-1])["peak_rss_bytes"]
        return None if value is None else int(value)

    with ThreadPoolExecutor(max_workers=len(specs)) as pool:
        measured = dict(zip(specs, pool.map(measure, specs.values()), strict=True))
    baseline = measured.pop(None)
    return baseline, {str(k): v for k, v in measured.items()}


@dataclass(frozen=True)
class _Model:
    label: str
    path: Path
    providers: tuple[Provider, ...]


def _models(config: BenchmarkConfig) -> list[_Model]:
    """MODEL (and --vs) as files with their providers: an OUT_DIR's manifest providers, else CPU."""
    from qconvert.errors import SourceError
    from qconvert.runtime import CPU, manifest_providers, read_manifest

    def resolve(given: Path, flag: str, name: str = "model.onnx") -> _Model:
        if given.is_dir():
            manifest = read_manifest(given)
            path = given / name
            if not path.is_file():
                raise SourceError(
                    f"{flag} {given}: the folder has no {name}. Give a folder written by `qconvert export`."
                )
            return _Model(str(path), path, tuple(manifest_providers(given, manifest)))
        if not given.exists():
            raise SourceError(
                f"{flag} {given}: no such file or folder. Give an .onnx file or a folder written by "
                "`qconvert export`."
            )
        if given.suffix != ".onnx":
            raise SourceError(f"{flag} {given}: not an .onnx file. Give an .onnx file or an OUT_DIR.")
        return _Model(str(given), given, (CPU,))

    first = resolve(Path(config.model), "MODEL")
    if config.vs is not None:
        second = resolve(Path(config.vs), "--vs")
    elif Path(config.model).is_dir():
        second = resolve(Path(config.model), "MODEL", "reference.onnx")
    else:
        return [first]
    if second.label == first.label:
        second = replace(second, label=f"{second.label} (--vs)")
    return [first, second]


def _model_inputs(session: Any) -> list[ModelInput]:
    from qconvert.calibrate import ModelInput
    from qconvert.errors import SourceError

    inputs = []
    for i in session.get_inputs():
        if i.type not in _ORT_DTYPES:
            raise SourceError(f"input {i.name!r} has type {i.type}, which qconvert benchmark cannot feed.")
        dims = tuple(d if isinstance(d, int) and d > 0 else None for d in i.shape)
        inputs.append(ModelInput(i.name, dims, _ORT_DTYPES[i.type]))
    return inputs


def _feeds(
    config: BenchmarkConfig, inputs: Sequence[ModelInput], where: str
) -> tuple[dict[str, np.ndarray], str, str, list[str]]:
    """(feeds at the batch size, 'random' | 'data', a description, notes)."""
    from qconvert.calibrate import load_dataset
    from qconvert.errors import ConfigError

    notes = []
    for inp in inputs:
        if not inp.dims:
            raise ConfigError(
                f"input {inp.name!r} of {where} is a scalar; it has no batch axis to benchmark."
            )
        if inp.dims[0] is not None and inp.dims[0] != config.batch:
            raise ConfigError(
                f"--batch {config.batch}: {where} fixes the batch axis of input {inp.name!r} to "
                f"{inp.dims[0]}. Pass --batch {inp.dims[0]}."
            )
    if config.data is not None:
        dataset = load_dataset(config.data, inputs, flag="--data")
        n = len(dataset)
        index = np.arange(config.batch) % n
        feeds = {k: np.ascontiguousarray(v[index]) for k, v in dataset.feeds.items()}
        if n < config.batch:
            notes.append(f"--data has {n} sample(s), fewer than --batch {config.batch}: samples are repeated")
        return feeds, "data", f"the first {min(n, config.batch)} sample(s) of --data {config.data}", notes
    rng = np.random.default_rng(RANDOM_SEED)
    feeds = {}
    for inp in inputs:
        free = [i for i, d in enumerate(inp.dims[1:], 1) if d is None]
        if free:
            raise ConfigError(
                f"input {inp.name!r} of {where} has dynamic axes besides the batch ({free}), so random inputs "
                "have no shape. Pass --data with real inputs (.npz keyed by input name)."
            )
        shape = (config.batch, *(d for d in inp.dims[1:] if d is not None))
        if inp.dtype == "bool":
            feeds[inp.name] = rng.random(shape) < 0.5
        elif np.issubdtype(np.dtype(inp.dtype), np.integer):
            feeds[inp.name] = rng.integers(0, 10, size=shape).astype(inp.dtype)
        else:
            feeds[inp.name] = rng.standard_normal(shape).astype(inp.dtype)
    return (
        feeds,
        "random",
        f"random inputs (seed {RANDOM_SEED}: standard normal floats, integers in [0, 10)); pass --data for "
        "real ones",
        notes,
    )


def _sessions(models: list[_Model], threads: int | None) -> dict[str, Session]:
    """One onnxruntime session per model, by label; a file onnxruntime cannot load is a SourceError."""
    from qconvert.errors import SourceError
    from qconvert.runtime import make_session

    sessions = {}
    for m in models:
        try:
            sessions[m.label] = make_session(m.path, m.providers, threads=threads)
        except Exception as e:  # onnxruntime raises its own types for a file it cannot load
            raise SourceError(f"{m.label}: onnxruntime cannot load it ({type(e).__name__}: {e}).") from e
    return sessions


def _shared_inputs(models: list[_Model], sessions: dict[str, Session]) -> list[ModelInput]:
    """The first model's inputs, which every other model must take too (names and types); a dynamic
    batch axis takes another model's fixed one, so the same feeds run them all."""
    from qconvert.errors import ConfigError

    inputs = _model_inputs(sessions[models[0].label].inner)
    for m in models[1:]:
        other = _model_inputs(sessions[m.label].inner)
        if [(i.name, i.dtype) for i in other] != [(i.name, i.dtype) for i in inputs]:
            raise ConfigError(
                f"--vs: {m.label} takes inputs {[(i.name, i.dtype) for i in other]} but {models[0].label} takes "
                f"{[(i.name, i.dtype) for i in inputs]}; compare models with the same inputs."
            )
        for a, b in zip(inputs, other, strict=True):
            if a.dims[0] is None and b.dims[0] is not None:
                inputs[inputs.index(a)] = replace(a, dims=(b.dims[0], *a.dims[1:]))
    return inputs


def _provider_notes(sessions: dict[str, Session]) -> list[str]:
    """Which models ran on another provider than they asked for, and whether that split them."""
    notes = []
    fell_back: dict[tuple[str, str], list[str]] = {}
    for label, s in sessions.items():
        if s.fell_back:
            fell_back.setdefault((s.wanted, s.used), []).append(label)
    for (wanted, used), labels in fell_back.items():
        notes.append(f"{wanted} is not installed here: {', '.join(labels)} measured on {used}")
    if len({s.used for s in sessions.values()}) > 1:
        notes.append("the models ran on different providers, so their latencies are not comparable")
    return notes


def _increase(peak: int | None, baseline: int | None) -> int | None:
    return None if peak is None or baseline is None else peak - baseline


def benchmark_models(
    config: BenchmarkConfig, progress: Callable[[str], None] | None = None
) -> BenchmarkResult:
    """Latency (p50/p90), throughput, peak memory and file size of MODEL and, where given or implied
    (an OUT_DIR compares model.onnx with reference.onnx), the model it is compared against.

    Latency: all models in this process, on the same inputs, timed interleaved. Peak memory: one
    child process per model plus a baseline child (see `peak_memory`)."""
    from qconvert.artifacts import onnx_size

    say = progress or (lambda message: None)
    models = _models(config)
    say("loading the model(s)")
    sessions = _sessions(models, config.threads)
    inputs = _shared_inputs(models, sessions)
    feeds, kind, description, notes = _feeds(config, inputs, models[0].label)
    notes += _provider_notes(sessions)

    baseline_rss: int | None = None
    rss: dict[str, int | None] = {m.label: None for m in models}
    memory_method = None
    if config.memory:
        say("measuring peak memory (one child process per model, plus a baseline)")
        baseline_rss, rss = peak_memory(
            {m.label: (m.path, m.providers) for m in models}, feeds, config.threads, MEMORY_RUNS
        )
        memory_method = (
            "peak RSS (Linux VmHWM, else getrusage) of a child process that imports onnxruntime, holds the "
            f"inputs, creates the session and runs it {MEMORY_RUNS} times, minus that of a baseline child "
            "that does the same without the session and the runs"
        )

    say(f"timing {len(models)} model(s) interleaved, {config.repeats} runs each")
    warmup = 5
    timed = interleaved_latency(
        {m.label: functools.partial(sessions[m.label].inner.run, None, feeds) for m in models},
        repeats=config.repeats,
        warmup=warmup,
    )
    results = tuple(
        ModelBenchmark(
            label=m.label,
            path=str(m.path),
            precision=precision_of(m.path),
            size_bytes=onnx_size(m.path),
            wanted_provider=sessions[m.label].wanted,
            provider=sessions[m.label].used,
            batch=config.batch,
            latency=timed[m.label],
            peak_rss_bytes=rss[m.label],
            peak_memory_bytes=_increase(rss[m.label], baseline_rss),
        )
        for m in models
    )
    return BenchmarkResult(
        models=results,
        batch=config.batch,
        repeats=config.repeats,
        warmup=warmup,
        threads=config.threads,
        inputs=kind,
        inputs_description=description,
        input_shapes={k: list(v.shape) for k, v in feeds.items()},
        latency_method=(
            f"{len(models)} model(s) in one process on the same inputs, {warmup} warm-up runs each, then "
            f"{config.repeats} timed runs each, interleaved (order rotated every round)"
        ),
        memory_method=memory_method,
        memory_baseline_rss_bytes=baseline_rss,
        notes=tuple(notes),
    )
