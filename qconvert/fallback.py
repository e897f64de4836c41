"""Accuracy-aware fallback: keep the most sensitive nodes in float until the tolerance holds.

Greedy: nodes are kept in float in the order the sensitivity ranking gives (worst first), one at a
time (a few at a time when the budget is large), re-quantizing and re-validating after each step,
until validation passes or the budget (a number of nodes) is spent.

"Kept in float" means more than onnxruntime's `nodes_to_exclude`: an excluded node still reads a
dequantized tensor wherever a quantized neighbour quantizes that tensor (a quantized producer
quantizes its own output), so excluding the node that reads an outlier tensor would change
nothing. `keep_float` therefore rewires each kept node (and the data-movement nodes between it and
its producers) to read the float tensors, and drops the Q/DQ pairs nobody reads any more.

Nothing here quantizes or validates by itself: the caller passes `build(kept, dest)` and
`validate(path)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qconvert.calibrate.streaming import FOLDED_ACTIVATIONS
from qconvert.validation.intervals import PASSED
from qconvert.validation.sensitivity import DATA_MOVEMENT_OPS

if TYPE_CHECKING:
    import onnx

    from qconvert.validation import ValidationResult

DEFAULT_MAX_NODES = 10
DEFAULT_SHARE = 0.25  # of the quantized nodes
STEPS_WANTED = 10  # above this many nodes of budget, several nodes are added per step

# ops through which a kept-float node's input is followed back to its float source (plus the
# activations the quantizer folds into the op before them)
PASS_THROUGH_OPS = DATA_MOVEMENT_OPS | FOLDED_ACTIVATIONS


def default_budget(quantized_nodes: int) -> int:
    """10 nodes or 25% of the quantized nodes, whichever is smaller (at least 1 when there are any)."""
    if quantized_nodes <= 0:
        return 0
    return min(DEFAULT_MAX_NODES, max(1, math.ceil(DEFAULT_SHARE * quantized_nodes)))


def keep_float(src: Path, dest: Path, nodes: Sequence[str], reference: Path) -> Path:
    """Rewire `nodes` of the Q/DQ graph `src` (quantized from the fp32 graph `reference`) to read
    float activations; write `dest` (see `rewire_float`)."""
    import onnx

    from qconvert.artifacts import save_onnx

    model = onnx.load(str(src))
    rewire_float(model, onnx.load(str(reference)), nodes, src.name)
    prune_qdq(model)
    onnx.checker.check_model(model)
    return save_onnx(model, dest)


def rewire_float(
    model: onnx.ModelProto, ref: onnx.ModelProto, nodes: Sequence[str], what: str = "the graph"
) -> None:
    """Rewire `nodes` of the Q/DQ graph `model` (quantized from the fp32 graph `ref`) to read float
    activations, in place.

    Each input of a kept node that comes through QuantizeLinear -> DequantizeLinear is replaced by
    the tensor before the QuantizeLinear; where it comes through a pass-through op (a reshape, a
    Relu...), that op is rewired the same way. Where the quantizer folded a Relu/Clip into the node
    before it (the Q/DQ range did the clipping), that activation is put back in float. Constant
    inputs (dequantized weights) are left alone. `prune_qdq` then drops what nobody reads."""
    import onnx

    graph = model.graph
    init = {t.name for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    ref_producer = {o: n for n in ref.graph.node for o in n.output}
    ref_init = {t.name: t for t in ref.graph.initializer}
    restored: dict[str, str] = {}

    def restore_activation(tensor: str) -> str:
        """`tensor` as the fp32 graph computes it: re-apply a Relu/Clip the quantizer folded away."""
        act, made = ref_producer.get(tensor), producer.get(tensor)
        if act is None or made is None or act.op_type not in FOLDED_ACTIVATIONS or act.name == made.name:
            return tensor
        if tensor not in restored:
            node = onnx.NodeProto()
            node.CopyFrom(act)
            node.name = f"{act.name}_float"
            node.input[0] = tensor
            node.output[0] = f"{tensor}_float"
            for extra in node.input[1:]:
                if extra and extra not in init and extra in ref_init:
                    graph.initializer.append(ref_init[extra])
                    init.add(extra)
            position = list(graph.node).index(made) + 1
            graph.node.insert(position, node)
            producer[node.output[0]] = node
            restored[tensor] = node.output[0]
        return restored[tensor]

    by_name = {n.name: n for n in graph.node if n.name}
    missing = [n for n in nodes if n not in by_name]
    if missing:
        raise ValueError(f"no such node(s) in {what}: {', '.join(missing)}")

    def float_source(tensor: str) -> str | None:
        dq = producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] in init:
            return None
        q = producer.get(dq.input[0])
        if q is None or q.op_type != "QuantizeLinear":
            return None
        return str(q.input[0])

    todo = [by_name[n] for n in nodes]
    seen: set[int] = set()
    while todo:
        node = todo.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for i, tensor in enumerate(node.input):
            source = float_source(tensor)
            if source is not None:
                tensor = restore_activation(source)
                node.input[i] = tensor
            up = producer.get(tensor)
            if up is not None and up.op_type in PASS_THROUGH_OPS:
                todo.append(up)


def prune_qdq(model: onnx.ModelProto) -> None:
    """Drop Q/DQ nodes whose outputs nobody reads (until nothing changes), then the initializers and
    value_info nobody uses, in place."""
    graph = model.graph
    outputs = {o.name for o in graph.output}
    while True:
        read = {i for n in graph.node for i in n.input} | outputs
        dead = [
            n
            for n in graph.node
            if n.op_type in ("QuantizeLinear", "DequantizeLinear") and not any(o in read for o in n.output)
        ]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    read = {i for n in graph.node for i in n.input}
    for t in [t for t in graph.initializer if t.name not in read]:
        graph.initializer.remove(t)
    keep_vi = read | outputs | {o for n in graph.node for o in n.output}
    for vi in [v for v in graph.value_info if v.name not in keep_vi]:
        graph.value_info.remove(vi)


@dataclass(frozen=True)
class Step:
    kept_float: tuple[str, ...]  # every node in float at this step
    verdict: str  # validation.intervals: passed | failed | inconclusive
    failures: tuple[str, ...]
    outputs: dict[str, dict[str, float]]  # the metrics validation measured, per output

    @property
    def passed(self) -> bool:
        return self.verdict == PASSED

    def as_json(self) -> dict[str, Any]:
        return {
            "kept_float": list(self.kept_float),
            "passed": self.passed,
            "verdict": self.verdict,
            "failures": list(self.failures),
            "outputs": self.outputs,
        }


@dataclass(frozen=True)
class FallbackResult:
    passed: bool
    budget: int
    kept_float: tuple[str, ...]  # the nodes of the model that passed (or of the last attempt)
    steps: tuple[Step, ...]
    model: Path | None  # the graph that passed; None when none did
    validation: ValidationResult | None  # its validation
    reason: str  # why the search stopped, in words

    def as_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "budget": self.budget,
            "kept_float": list(self.kept_float),
            "reason": self.reason,
            "steps": [s.as_json() for s in self.steps],
        }


def search(
    order: Sequence[str],
    budget: int,
    build: Callable[[tuple[str, ...], Path], Path],
    validate: Callable[[Path], ValidationResult],
    work: Path,
    on_step: Callable[[int, int], None] | None = None,
) -> FallbackResult:
    """Keep nodes of `order` in float, worst first, until `validate` passes or `budget` nodes are
    float. `build(kept, dest)` writes the graph with `kept` in float."""
    work.mkdir(parents=True, exist_ok=True)
    budget = max(0, budget)
    limit = min(budget, len(order))
    per_step = max(1, math.ceil(budget / STEPS_WANTED))
    steps: list[Step] = []
    kept: tuple[str, ...] = ()
    total = math.ceil(limit / per_step) if limit else 0
    while len(kept) < limit:
        kept = tuple(order[: min(limit, len(kept) + per_step)])
        if on_step is not None:
            on_step(len(steps), total)
        path = build(kept, work / f"fallback-{len(steps)}.onnx")
        result = validate(path)
        steps.append(Step(kept, result.verdict, tuple(c.describe() for c in result.failures), result.outputs))
        if result:
            return FallbackResult(
                True,
                budget,
                kept,
                tuple(steps),
                path,
                result,
                f"within tolerance with {len(kept)} node(s) kept in float",
            )
    if budget == 0:
        reason = "the fallback budget is 0 nodes, so no node could be kept in float"
    elif limit < budget:
        reason = (
            f"every ranked node ({limit}) was kept in float and the model is still outside tolerance: "
            "the loss is not in the ranked nodes (see the sensitivity ranking)"
        )
    else:
        reason = (
            f"the budget of {budget} node(s) is spent and the model is still outside tolerance; "
            "raise --auto-budget, or loosen --tolerance"
        )
    return FallbackResult(False, budget, kept, tuple(steps), None, None, reason)
