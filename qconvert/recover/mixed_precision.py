"""Mixed precision: per-layer choice among the formats the target runs (int8, a16w8, fp16, fp32),
where int8 alone cannot meet the tolerance.

A `post` step: it takes the graph the run's quantizer wrote (after every earlier step: bias
correction, AdaRound...) and raises chosen layers above int8 with `precision.apply`, whose 16-bit
Q/DQ parameters follow exactly from the quantizer's own 8-bit ones. So nothing is recalibrated and
no candidate is re-quantized: the calibrated ranges are used once, as issue 12 asks.

The criterion accounts for error propagation. Every candidate is judged by what it does to the
model's *outputs* with every other layer quantized as it currently is (cumulative, not the layer's
isolated SQNR): the gain of raising layer L to format F is the change in output SQNR (the worst
output, in dB) on calibration samples, against the fp32 graph before any recovery step. Its cost is
what F costs over L's current format, as a fraction of the int8 graph: latency (the whole-graph p50
latency with every layer at F against the int8 graph, measured on the target's provider here, or a
nominal cost per format, NOMINAL_LATENCY, where the provider is not on this machine; shared out by
`_work`, half by multiply-adds and half per layer) plus size (L's weights at F's width).

The search is a lazy greedy by gain per cost (Minoux's accelerated greedy). Every layer is screened
once at the highest format it can take, on the first `screen_samples`. Then the candidate with the
best gain/cost is re-measured on the current configuration and taken only if it still beats every
other candidate's (older, optimistic) ratio; else it goes back with its new ratio. The first time a
layer's screened format reaches the top, its lower formats join with the screened gain as their
optimistic bound, so a cheaper format (a16w8, fp16) wins wherever it gains nearly as much. Layers
that screened as noise are screened again, against the current configuration, when the candidates
run out (a tensor read by two layers is only fixed once both are raised). Each step taken is one
configuration of the trade-off table; the search stops when the run's tolerance holds on the
calibration samples, when no candidate gains MIN_GAIN_DB any more, when `max_share` of the layers
are raised, or when the time budget is spent. This costs about one measurement per layer plus a few
per step, where a plain greedy re-measures every layer at every step; the two agree wherever a
layer's gain does not grow as others are raised, which a greedy over measured gains cannot know.

The trade-off table (`details["tradeoff"]`, report.json's `tradeoff`): every configuration tried, its
per-format layer counts, accuracy on the calibration samples, latency and size against fp32 (latency
measured interleaved, where the provider is here), seconds; which are Pareto-optimal in (accuracy,
latency, size); the chosen one: the cheapest (latency + size increase) that meets the tolerance, else
the most accurate. Either is on the Pareto front by construction.

A layer raised to fp32/fp16 takes its weights and bias from the fp32 graph the run quantized, so it
keeps what earlier steps did to them (equalization stays consistent with its neighbours; a bias that
bias correction shifted for int8 rounding stays shifted). The search measures the result, so that
shows in the figures.
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import onnx

from qconvert.calibrate import Dataset
from qconvert.fallback import DEFAULT_SHARE
from qconvert.recover import precision
from qconvert.recover.activations import run_graph
from qconvert.recover.base import Recovery, RecoveryInput, StepResult, meets, worst_slack
from qconvert.targets.base import LAYER_FORMATS
from qconvert.tolerance import Tolerance
from qconvert.validation import ValidationResult, evaluate
from qconvert.validation.sensitivity import finite_or_none

# relative cost per multiply-add of each format where latency cannot be measured here (its operand
# width: what bounds throughput and memory traffic on accelerators with int8 and fp16 units)
NOMINAL_LATENCY = {"int8": 1.0, "a16w8": 2.0, "fp16": 2.0, "fp32": 4.0}
WEIGHT_BYTES = {"int8": 1, "a16w8": 1, "fp16": 2, "fp32": 4}
RANK = {f: i for i, f in enumerate(LAYER_FORMATS)}
MIN_GAIN_DB = 0.1  # a step must raise the worst output SQNR by this much to be taken
MIN_COST = 1e-3  # cost floor (a fraction of the int8 graph's latency + size)
# metrics validation measures on unlabelled outputs; other bounds (accuracy_drop...) are not the goal here
GOAL_METRICS = frozenset(
    {
        "cosine",
        "sqnr_db",
        "top1_agreement",
        "top5_agreement",
        "max_abs",
        "mean_abs",
        "rel_error",
        "kl_div",
        "nonfinite",
    }
)


@dataclass(frozen=True)
class Measured:
    """A configuration's figures on the calibration samples."""

    sqnr_db: float  # the worst output's
    passed: bool  # the goal (the run's tolerance) holds
    slack: float  # the worst check's slack relative to its bound
    outputs: dict[str, dict[str, float]]


@dataclass
class Point:
    """One configuration of the trade-off table."""

    formats: dict[str, str]  # node -> format, the nodes above int8
    measured: Measured
    cost: float  # predicted latency + size increase over the int8 graph (fractions)
    seconds: float  # since the search began
    size_ratio: float = math.nan
    latency_ratio: float | None = None  # p50 vs fp32, measured here
    latency_vs_int8: float | None = None
    pareto: bool = False
    chosen: bool = False

    def as_json(self, counts: dict[str, int]) -> dict[str, Any]:
        return {
            "layers": counts,
            "raised": dict(sorted(self.formats.items())),
            "sqnr_db": finite_or_none(self.measured.sqnr_db),
            "meets_goal": self.measured.passed,
            "slack": finite_or_none(self.measured.slack),
            "outputs": self.measured.outputs,
            "predicted_cost": self.cost,
            "latency_ratio": self.latency_ratio,
            "latency_vs_int8": self.latency_vs_int8,
            "size_ratio": self.size_ratio,
            "seconds": self.seconds,
            "pareto": self.pareto,
            "chosen": self.chosen,
        }


def _outputs(model: onnx.ModelProto, data: Dataset) -> list[np.ndarray]:
    names = [o.name for o in model.graph.output]
    parts = list(run_graph(model, data, names))
    return [np.concatenate([p[n] for p in parts]) for n in names]


class _Evaluator:
    """Measures a configuration's outputs against the fp32 reference, on fixed calibration samples."""

    def __init__(
        self,
        quantized: onnx.ModelProto,
        fp32: onnx.ModelProto,
        reference: onnx.ModelProto,
        data: Dataset,
        screen: int,
        tolerance: Tolerance,
        symmetric: bool,
    ) -> None:
        self.quantized, self.fp32, self.symmetric = quantized, fp32, symmetric
        self.names = [o.name for o in quantized.graph.output]
        self.sets = {"full": data, "screen": data.subset(slice(0, screen))}
        full_ref = _outputs(reference, data)
        self.ref = {"full": full_ref, "screen": [r[:screen] for r in full_ref]}
        # the goal: the run's bounds that can be checked on these (unlabelled) outputs
        measurable = evaluate(self.names, full_ref, full_ref, Tolerance(())).outputs
        self.goal = Tolerance(
            tuple(
                b
                for b in tolerance.bounds
                if b.metric in GOAL_METRICS
                and any(b.metric in m for o, m in measurable.items() if b.output in (None, o))
            )
        )
        self.skipped = [b.describe() for b in tolerance.bounds if b not in self.goal.bounds]
        self.evaluations = 0

    def graph(self, formats: Mapping[str, str], emulate: bool) -> onnx.ModelProto:
        return precision.apply(self.quantized, self.fp32, formats, emulate=emulate, symmetric=self.symmetric)

    def measure(self, formats: Mapping[str, str], which: str = "full") -> Measured:
        self.evaluations += 1
        out = _outputs(self.graph(formats, emulate=True), self.sets[which])
        result: ValidationResult = evaluate(self.names, self.ref[which], out, self.goal)
        sqnr = min(float(m.get("sqnr_db", math.inf)) for m in result.outputs.values())
        keep = ("sqnr_db", "top1_agreement", "cosine", "cosine_min")
        outputs = {n: {k: v for k, v in m.items() if k in keep} for n, m in result.outputs.items()}
        return Measured(sqnr, meets(result), worst_slack(result), outputs)


@dataclass
class _Costs:
    """Predicted cost of a node in a format: latency and size increase over the int8 graph, as
    fractions of its latency and size."""

    work: dict[str, float]  # node -> share of the multiply-adds of the raisable nodes
    weight_params: dict[str, int]  # node -> elements of its dequantized weights
    int8_bytes: int
    latency_factor: dict[str, float]  # format -> whole-graph latency at that format / int8

    def of(self, node: str, fmt: str) -> float:
        if fmt == "int8":
            return 0.0
        latency = (self.latency_factor.get(fmt, 1.0) - 1.0) * self.work.get(node, 0.0)
        extra = (WEIGHT_BYTES[fmt] - WEIGHT_BYTES["int8"]) * self.weight_params.get(node, 0)
        return latency + extra / max(self.int8_bytes, 1)


def _work(model: onnx.ModelProto, nodes: list[str]) -> dict[str, float]:
    """node -> its share of the latency a format change costs: half by multiply-adds per sample
    (output elements x reduction length), half the same for every node (a layer that leaves the int8
    path pays a dequantize/quantize round trip and memory traffic whatever its arithmetic)."""
    from onnx import shape_inference

    try:
        inferred = shape_inference.infer_shapes(model)
    except Exception:  # over 2 GB: every node counts the same
        inferred = model
    shapes: dict[str, list[int]] = {}
    for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        dims = v.type.tensor_type.shape.dim
        shapes[v.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    by_name = {n.name: n for n in model.graph.node}
    macs: dict[str, float] = {}
    for name in nodes:
        node = by_name.get(name)
        if node is None:
            macs[name] = 1.0
            continue
        out = shapes.get(node.output[0])
        elements = float(np.prod(out[1:])) if out else 1.0
        weight = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.op_type in ("Conv", "ConvTranspose") and weight:
            reduction = float(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes.get(node.input[0])
            reduction = float(a[-1]) if a else 1.0
        else:
            reduction = 1.0
        macs[name] = max(elements * reduction, 1.0)
    total, count = sum(macs.values()) or 1.0, len(macs)
    return {n: 0.5 * v / total + 0.5 / count for n, v in macs.items()}


def _weight_params(quantized: onnx.ModelProto, nodes: list[str]) -> dict[str, int]:
    """node -> elements of the int8 weights it dequantizes (biases are int32 and count nothing here)."""
    inits = {t.name: t for t in quantized.graph.initializer}
    producer = {o: n for n in quantized.graph.node for o in n.output}
    by_name = {n.name: n for n in quantized.graph.node}
    out: dict[str, int] = {}
    for name in nodes:
        count = 0
        for tensor in by_name[name].input:
            dq = producer.get(tensor)
            if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in inits:
                t = inits[dq.input[0]]
                if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8):
                    count += int(np.prod(t.dims))
        out[name] = count
    return out


def _latency_factors(
    ev: _Evaluator, options: dict[str, tuple[str, ...]], formats: list[str], inp: RecoveryInput
) -> tuple[dict[str, float], list[str]]:
    """format -> whole-graph p50 latency with every node that can take it at that format, over the
    int8 graph's (measured on the target's provider here), else NOMINAL_LATENCY."""
    if inp.time is None:
        nominal = {f: NOMINAL_LATENCY[f] / NOMINAL_LATENCY["int8"] for f in formats}
        return nominal, ["latency cost per format is nominal (the target's provider is not here)"]
    graphs = [ev.graph({}, emulate=False)]
    for fmt in formats:
        graphs.append(ev.graph({n: fmt for n, can in options.items() if fmt in can}, emulate=False))
    p50 = inp.time(graphs)
    factors = {fmt: p50[i + 1] / p50[0] for i, fmt in enumerate(formats)}
    line = ", ".join(f"{f} {v:.2f}x" for f, v in factors.items())
    return factors, [f"whole-graph latency per format against int8 here: {line}"]


class _Candidates:
    """The lazy greedy's state: the current configuration (node -> format above int8), its figures,
    and a heap of (node, format) candidates by gain per cost, each gain measured on the configuration
    of `version` (-1: screened, on the screening samples)."""

    def __init__(
        self,
        ev: _Evaluator,
        options: dict[str, tuple[str, ...]],
        costs: _Costs,
        base: Measured,
        spent: Callable[[], bool],
        progress: Callable[[int, int], None] | None,
    ) -> None:
        self.ev, self.options, self.costs, self.spent, self.progress = ev, options, costs, spent, progress
        self.current: dict[str, str] = {}
        self.now, self.version = base, 0
        self.heap: list[tuple[float, str, str, float, int]] = []  # (-gain/cost, node, fmt, gain, version)
        self.fresh: dict[tuple[str, str], Measured] = {}  # measured on the current configuration
        self.expanded: set[str] = set()  # nodes whose lower formats compete too

    def push(self, node: str, fmt: str, gain: float, version: int) -> None:
        cost = self.costs.of(node, fmt) - self.costs.of(node, self.current.get(node, "int8"))
        heapq.heappush(self.heap, (-gain / max(cost, MIN_COST), node, fmt, gain, version))

    def screen(self, nodes: list[str]) -> list[str]:
        """Each node's highest format against the current configuration, on the screening samples:
        a candidate where it gains MIN_GAIN_DB / 2 or more; the others (noise, for now) are returned."""
        here = self.ev.measure(self.current, "screen").sqnr_db
        left = []
        for i, node in enumerate(nodes):
            top = self.options[node][-1]
            if self.spent() or RANK[top] <= RANK[self.current.get(node, "int8")]:
                continue
            if self.progress is not None and not self.current:
                self.progress(i, len(self.options))
            gain = self.ev.measure({**self.current, node: top}, "screen").sqnr_db - here
            if gain >= MIN_GAIN_DB / 2:
                self.push(node, top, gain, -1)
            else:
                left.append(node)
        return left

    def next(self, limit: int) -> Measured | None:
        """Pop the best candidate: re-measure it if its gain is older than the current configuration
        (it competes again), else take it. The new configuration's figures when one was taken."""
        _, node, fmt, gain, at = heapq.heappop(self.heap)
        if RANK[fmt] <= RANK[self.current.get(node, "int8")]:
            return None
        trial = {**self.current, node: fmt}
        if node not in self.expanded and fmt == self.options[node][-1]:
            # first time near the top: its lower formats compete too, the screened gain of the
            # highest format as their (optimistic) bound
            self.expanded.add(node)
            for lower in self.options[node][:-1]:
                self.push(node, lower, gain, -1)
        if at != self.version:  # measured on another configuration: re-measure, then compete again
            self.fresh[node, fmt] = self.ev.measure(trial)
            self.push(node, fmt, self.fresh[node, fmt].sqnr_db - self.now.sqnr_db, self.version)
            return None
        if gain < MIN_GAIN_DB:
            return None  # its best ratio buys (almost) nothing now: dropped
        if node not in self.current and len(self.current) >= limit:
            return None  # the layer budget is spent: only layers already raised may go higher
        self.current, self.now, self.version = trial, self.fresh[node, fmt], self.version + 1
        self.fresh.clear()
        return self.now


class MixedPrecision(Recovery):
    name: ClassVar[str] = "mixed_precision"
    phase: ClassVar[str] = "post"
    needs_calibration: ClassVar[bool] = True
    formats: ClassVar[frozenset[str]] = frozenset({"qdq"})
    summary: ClassVar[str] = (
        "per-layer precision among the target's formats (int8, a16w8, fp16, fp32), chosen by the gain "
        "in output SQNR with the other layers quantized, per unit of measured latency and size cost"
    )

    def __init__(
        self,
        samples: int = 32,
        screen_samples: int = 16,
        budget_seconds: float = 300.0,
        max_share: float = DEFAULT_SHARE,
    ) -> None:
        self.samples = samples  # calibration samples every configuration is measured on
        self.screen_samples = screen_samples  # ... the first screening of each layer on
        self.budget_seconds = budget_seconds
        # at most this share of the layers raised (at least one): beyond it the graph is no longer an
        # int8 graph with exceptions (the float fallback's default share too)
        self.max_share = max_share

    def run(self, fp32: onnx.ModelProto, quantized: onnx.ModelProto | None, inp: RecoveryInput) -> StepResult:
        assert quantized is not None and inp.calibration is not None
        start = time.perf_counter()
        formats = [f for f in inp.formats if f != "int8"]
        if not formats:
            return StepResult(
                quantized,
                False,
                ("mixed_precision: the target runs no per-layer format above int8: nothing to choose",),
            )
        options = precision.raisable(quantized, tuple(formats))
        if not options:
            return StepResult(quantized, False, ("mixed_precision: no quantized layer to raise",))
        reference = onnx.load(str(inp.original)) if inp.original is not None else fp32
        data = inp.calibration.subset(slice(0, self.samples))
        screen = min(self.screen_samples, len(data))
        tolerance = inp.tolerance or Tolerance.for_bits(8)
        ev = _Evaluator(quantized, fp32, reference, data, screen, tolerance, inp.qc.activation_symmetric)
        base = ev.measure({})
        points = [Point({}, base, 0.0, time.perf_counter() - start)]
        stopped = "the int8 graph already meets the tolerance on the calibration samples"
        factors: dict[str, float] = {}
        cost_notes: list[str] = []
        if not base.passed:  # the costs are measured only where there is something to choose
            nodes = list(options)
            factors, cost_notes = _latency_factors(ev, options, formats, inp)
            costs = _Costs(
                _work(fp32, nodes), _weight_params(quantized, nodes), quantized.ByteSize(), factors
            )
            stopped = self._search(ev, options, costs, points, start, inp)
        chosen = self._finish(ev, points, reference, inp)
        details = {
            "tradeoff": self._table(
                ev, points, chosen, formats, len(options), factors, cost_notes, stopped, start, len(data)
            ),
            "layer_formats": dict(sorted(points[chosen].formats.items())),
        }
        pick = points[chosen]
        if not pick.formats:
            note = (
                f"mixed_precision: no layer raised ({stopped}); worst output SQNR {base.sqnr_db:.1f} dB on "
                f"{len(data)} calibration samples (report.json: tradeoff)"
            )
            return StepResult(quantized, False, (note,), details)
        counts = self._counts(pick.formats, len(options))
        raised = ", ".join(f"{f} {n}" for f, n in counts.items() if f != "int8" and n)
        verdict = "meets" if pick.measured.passed else "does not meet"
        note = (
            f"mixed_precision: {len(pick.formats)} of {len(options)} layers raised ({raised}); worst output "
            f"SQNR {base.sqnr_db:.1f} -> {pick.measured.sqnr_db:.1f} dB on {len(data)} calibration samples, "
            f"which {verdict} the tolerance there; {len(points)} configurations, {ev.evaluations} "
            f"measurements, {time.perf_counter() - start:.0f} s (report.json: tradeoff)"
        )
        model = ev.graph(pick.formats, emulate=False)
        settings = {"layer_formats": tuple(sorted(pick.formats.items()))}
        return StepResult(model, True, (note,), details, settings=settings)

    def _search(
        self,
        ev: _Evaluator,
        options: dict[str, tuple[str, ...]],
        costs: _Costs,
        points: list[Point],
        start: float,
        inp: RecoveryInput,
    ) -> str:
        """Lazy greedy by gain per cost from points[0] (all int8); appends each step taken to
        `points`; returns why it stopped."""

        def spent() -> bool:
            return time.perf_counter() - start > self.budget_seconds

        total = len(options)
        limit = max(1, math.ceil(self.max_share * total))
        c = _Candidates(ev, options, costs, points[0].measured, spent, inp.progress)
        # a layer that gains nothing alone may gain once others are raised (a broken tensor read by
        # two layers): the rest are screened again whenever the candidates run out
        waiting, screened_at = c.screen(list(options)), 0
        while c.heap or (waiting and screened_at != c.version and len(c.current) < limit):
            if spent():
                return f"the time budget of {self.budget_seconds:.0f} s is spent"
            if not c.heap:
                waiting, screened_at = c.screen(waiting), c.version
                continue
            taken = c.next(limit)
            if taken is None:
                continue
            cost = sum(costs.of(n, f) for n, f in c.current.items())
            points.append(Point(dict(c.current), taken, cost, time.perf_counter() - start))
            if inp.progress is not None:
                inp.progress(total + len(points) - 1, total + len(options))
            if taken.passed:
                return "the tolerance holds on the calibration samples"
        if len(c.current) >= limit:
            return f"the budget of {limit} raised layers ({self.max_share:.0%} of {total}) is spent"
        return f"no layer left raises the worst output SQNR by {MIN_GAIN_DB} dB"

    def _finish(
        self, ev: _Evaluator, points: list[Point], reference: onnx.ModelProto, inp: RecoveryInput
    ) -> int:
        """Sizes and (where measurable) latencies of the points, the Pareto front, the chosen one."""
        graphs = [ev.graph(p.formats, emulate=False) for p in points]
        fp32_bytes = max(reference.ByteSize(), 1)
        for p, g in zip(points, graphs, strict=True):
            p.size_ratio = g.ByteSize() / fp32_bytes
        if inp.time is not None:
            p50 = inp.time([reference, *graphs])
            for p, ms in zip(points, p50[1:], strict=True):
                p.latency_ratio, p.latency_vs_int8 = ms / p50[0], ms / p50[1]

        def latency(p: Point) -> float:  # increase over the int8 graph: measured, else predicted
            return p.latency_vs_int8 - 1.0 if p.latency_vs_int8 is not None else p.cost

        def size(p: Point) -> float:
            return p.size_ratio / points[0].size_ratio - 1.0

        def better(a: Point, b: Point) -> list[float]:  # >= 0 on every axis: a is no worse than b
            return [
                a.measured.slack - b.measured.slack,
                a.measured.sqnr_db - b.measured.sqnr_db,
                latency(b) - latency(a),
                size(b) - size(a),
            ]

        for p in points:
            p.pareto = not any(
                min(d) >= 0 and max(d) > 0 for d in (better(q, p) for q in points if q is not p)
            )

        # the cheapest that meets the goal, else the most accurate; either is on the front
        def rank(i: int) -> tuple[float, ...]:
            p = points[i]
            return (latency(p) + size(p), -p.measured.slack, -p.measured.sqnr_db)

        passing = [i for i, p in enumerate(points) if p.measured.passed]
        if passing:
            chosen = min(passing, key=rank)
        else:
            chosen = max(
                range(len(points)),
                key=lambda i: (points[i].measured.slack, points[i].measured.sqnr_db, -rank(i)[0]),
            )
        points[chosen].chosen = True
        return chosen

    @staticmethod
    def _counts(formats: Mapping[str, str], layers: int) -> dict[str, int]:
        counts = {"int8": layers - len(formats)}
        for fmt in formats.values():
            counts[fmt] = counts.get(fmt, 0) + 1
        return counts

    def _table(
        self,
        ev: _Evaluator,
        points: list[Point],
        chosen: int,
        formats: list[str],
        layers: int,
        latency_factor: dict[str, float],
        cost_notes: list[str],
        stopped: str,
        start: float,
        samples: int,
    ) -> dict[str, Any]:
        return {
            "formats": ["int8", *formats],
            "layers": layers,
            "samples": samples,
            "goal": [b.describe() for b in ev.goal.bounds],
            "not_checked": ev.skipped,
            # whole-graph latency per format over int8 (measured here, or nominal), where the search ran
            "latency_factor": latency_factor,
            "latency_measured": points[0].latency_ratio is not None,
            "notes": cost_notes,
            "stopped": stopped,
            "evaluations": ev.evaluations,
            "seconds": time.perf_counter() - start,
            "chosen": chosen,
            "configurations": [p.as_json(self._counts(p.formats, layers)) for p in points],
            "method": "lazy greedy by the gain in worst output SQNR (other layers quantized) per unit of "
            "latency + size cost; accuracy on calibration samples against the fp32 graph; Pareto-optimal in "
            "(worst-check slack, worst output SQNR, latency, size); chosen: the cheapest meeting the tolerance, else the most "
            "accurate",
        }


__all__ = ["MixedPrecision"]


STEP = MixedPrecision()  # registered (lazily) in qconvert/recover/__init__.py as RECOVERY
