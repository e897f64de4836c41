"""The model family (from the graph's ops) and the defaults each family gets."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from qconvert.recover.defaults import choose, model_family


def _graph(ops: list[str]) -> onnx.ModelProto:
    nodes = [helper.make_node(op, ["x"], [f"y{i}"], name=f"n{i}") for i, op in enumerate(ops)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    return helper.make_model(helper.make_graph(nodes, "g", [x], []))


def test_families() -> None:
    assert model_family(_graph(["Conv", "Relu", "Conv", "Gemm"])) == "conv"
    encoder = ["MatMul"] * 6 + ["Softmax", "LayerNormalization", "Add"]
    assert model_family(_graph(encoder)) == "transformer"
    assert model_family(_graph(["Attention", "SkipLayerNormalization", "MatMul"])) == "transformer"
    # a ViT: one patch-embedding Conv does not make it a conv net
    assert model_family(_graph(["Conv", *encoder])) == "transformer"
    # attention without normalisation, or plain MLPs, are neither
    assert model_family(_graph(["MatMul", "MatMul", "Softmax"])) == "other"
    assert model_family(_graph(["Gemm", "Relu", "Gemm"])) == "other"


def test_defaults_per_family() -> None:
    conv = choose("conv", "tensorrt", 8, "static")
    assert conv.recover == ("gptq", "bias_correction") and conv.mode is None
    assert conv.float_stem and conv.float_outputs and conv.calibration_method == "mse"
    text = choose("transformer", "cpu", 8, "static")
    assert text.mode == "dynamic" and text.recover == ("smoothquant",)
    assert not text.matmuls_only
    assert choose("transformer", "tensorrt", 8, "static").mode is None  # no dynamic int8 there
    # the user's own static on cpu is kept: SmoothQuant, and only the MatMuls quantized
    forced = choose("transformer", "cpu", 8, "static", mode_given=True)
    assert forced.mode is None and forced.recover == ("smoothquant",) and forced.matmuls_only
    assert choose("conv", "cpu", 4, "weight-only").recover == ()  # measured at 8 bits only
    assert choose("other", "cpu", 8, "static").recover == ()
    assert choose("conv", "cpu", 8, "static", depthwise=False).recover == ()  # a ResNet: measured no gain


def _conv(name: str, x: str, y: str, group: int = 1) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, f"{name}_w"], [y], name=name, group=group)


@pytest.mark.parametrize("kernel", [[1, 1], [3, 3]])
def test_float_stem_is_the_first_conv_and_the_first_block_after_it(kernel: list[int]) -> None:
    """The first conv, the depthwise conv reading it and the pointwise projection after that; a
    full (3x3) conv after the depthwise one is not a projection and stays quantized."""
    from qconvert.recover.defaults import float_stem

    mobilenet = helper.make_model(
        helper.make_graph(
            [
                _conv("stem", "x", "s"),
                helper.make_node("Clip", ["s"], ["a"], name="relu6"),
                _conv("dw", "a", "d", group=32),
                helper.make_node("Clip", ["d"], ["e"], name="relu6_dw"),
                helper.make_node("Conv", ["e", "pw_w"], ["p"], name="pw", kernel_shape=kernel),
                _conv("next", "p", "n"),
            ],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
            [],
        )
    )
    assert float_stem(mobilenet) == (("stem", "dw", "pw") if kernel == [1, 1] else ("stem", "dw"))
    plain = helper.make_model(
        helper.make_graph(
            [_conv("c1", "x", "a"), helper.make_node("Relu", ["a"], ["r"], name="r"), _conv("c2", "r", "b")],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
            [],
        )
    )
    assert float_stem(plain) == ("c1",)
    assert float_stem(_graph(["Gemm"])) == ()
