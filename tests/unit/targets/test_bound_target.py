"""A target is bound to its options once (`Target.bind`): the options are checked there and every
method of the BoundTarget works from them; rule checks return Violations; presets are the layouts
targets share."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from qconvert.calibrate import ModelInput
from qconvert.errors import ConfigError
from qconvert.targets import TARGETS, BoundTarget, Options, Violation, presets
from qconvert.targets.qnn import QnnTarget

INPUTS = [ModelInput("x", (None, 4), "float32")]


@dataclasses.dataclass(frozen=True)
class CountingQnn(QnnTarget):
    """The qnn target, counting how often its options are resolved."""

    resolved: list[int] = dataclasses.field(default_factory=list)

    def resolve_options(self, given: Options | None = None) -> dict[str, str]:
        self.resolved.append(1)
        return super().resolve_options(given)


def _matmul(path: Path) -> Path:
    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [w],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_options_are_resolved_once_and_every_method_uses_them(tmp_path: Path) -> None:
    qnn = TARGETS.get("qnn")
    target = CountingQnn(qnn.name, qnn.description, qnn.modes, qnn.options, qnn.int8_ops, qnn.refused_bits)
    given = {"activation": "uint16", "backend": "cpu", "batch": "2"}
    bound = target.bind(given)
    assert isinstance(bound, BoundTarget) and bound.name == "qnn"
    qc = bound.quantize_config(8, bound.resolve_mode(8, None), "minmax")
    assert qc.activation_type == "uint16" and ("UseQDQContribOps", True) in qc.extra_options
    assert bound.providers(INPUTS, qc)[0].options == {"backend_type": "cpu"}
    assert "fixed to 2" in (bound.finalize(_matmul(tmp_path / "m.onnx"), INPUTS) or "")
    assert len(target.resolved) == 1  # bind() resolved them; nothing resolved them again
    assert dict(bound.options) == {**{o.name: o.default for o in qnn.options}, **given}
    with pytest.raises(TypeError):
        bound.options["batch"] = "4"  # type: ignore[index]  # read-only: bound once


@pytest.mark.parametrize(
    ("target", "options", "message"),
    [
        ("cpu", {"no_such": "1"}, "--target-option no_such: --target cpu has no such option"),
        ("cpu", {"format": "fast"}, "--target-option format=fast: not valid for --target cpu"),
        ("qnn", {"batch": "0"}, "--target-option batch=0: give a positive whole number"),
        ("cuda", {"device_id": "gpu0"}, "--target-option device_id=gpu0: give the CUDA device index"),
    ],
)
def test_bind_refuses_bad_options(target: str, options: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TARGETS.get(target).bind(options)


def test_violations_carry_rule_node_and_reason(tmp_path: Path) -> None:
    """The TensorRT rules on an fp32 MatMul graph with dynamic inputs and no TensorRT provider: each
    finding names its rule; it reads as the message users saw before (str is the reason)."""
    trt = TARGETS.get("tensorrt").bind()
    qc = trt.quantize_config(8, "static", "minmax")
    model = onnx.load(str(_matmul(tmp_path / "m.onnx")))
    dynamic = helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dq")
    model.graph.node.insert(0, dynamic)
    found = trt.violations(model, qc, trt.providers(INPUTS)[1:])
    assert [(v.rule, v.node) for v in found] == [("forbidden-op", "dq"), ("provider-missing", None)]
    assert [str(v) for v in found] == [
        "node dq is DynamicQuantizeLinear, which this target cannot run",
        "the TensorRT provider is missing from the provider list",
    ]
    assert found[0] == Violation("forbidden-op", "dq", str(found[0]))  # frozen data, compared by value


def test_presets_spell_out_the_shared_layouts() -> None:
    u8s8 = presets.u8s8(8, "static", "minmax")
    assert (u8s8.activation_type, u8s8.weight_type, u8s8.activation_symmetric, u8s8.weight_symmetric) == (
        "uint8",
        "int8",
        False,
        True,
    )
    s8s8 = presets.s8s8_symmetric(8, "static", "minmax")
    assert (s8s8.activation_type, s8s8.activation_symmetric, s8s8.quantize_bias) == ("int8", True, False)
    # the targets take them as they are: openvino's int8 is U8S8, cuda's and tensorrt's explicit S8S8
    assert TARGETS.get("openvino").bind().quantize_config(8, "static", "minmax") == u8s8
    assert TARGETS.get("cuda").bind().quantize_config(8, "static", "minmax") == s8s8
    implicit = (
        TARGETS.get("tensorrt").bind({"quantization": "implicit"}).quantize_config(8, "static", "minmax")
    )
    assert (
        dataclasses.replace(
            implicit, mode="static", format="qdq", forbidden_ops=s8s8.forbidden_ops, calibration_table=None
        )
        == s8s8
    )  # implicit: the same ranges, on the fp32 graph with a table
