"""Small real models for the tests, built with torch and exported with torch's dynamo exporter.

The model has one of each weight-carrying op the target rules care about: a Conv, a Gemm (a
Linear with bias) and a MatMul (a matrix parameter), with ReLUs between them. Exports are cached
per process as serialized bytes, so each test module pays for an export at most once and writes
the model into its own tmp folder.
"""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import numpy as np

INPUT_NAME = "pixels"
OUTPUT_NAME = "logits"
IMAGE_SHAPE = (1, 8, 8)  # per sample: channels, height, width
NUM_CLASSES = 5
HIDDEN = 16
CONV_CHANNELS = 4


@functools.lru_cache(maxsize=1)
def cnn_mlp():  # -> torch.nn.Module (torch is imported lazily)
    """A seeded conv -> relu -> linear (Gemm) -> relu -> matmul classifier, in eval mode."""
    import torch

    class CnnMlp(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(IMAGE_SHAPE[0], CONV_CHANNELS, 3, padding=1)
            self.fc = torch.nn.Linear(CONV_CHANNELS * IMAGE_SHAPE[1] * IMAGE_SHAPE[2], HIDDEN)
            self.head = torch.nn.Parameter(torch.randn(HIDDEN, NUM_CLASSES) * 0.3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = torch.relu(self.conv(x)).flatten(1)
            return torch.relu(self.fc(x)) @ self.head

    torch.manual_seed(0)
    return CnnMlp().eval()


def images(n: int, seed: int = 0) -> np.ndarray:
    """`n` float32 samples shaped like the model input."""
    return np.random.default_rng(seed).standard_normal((n, *IMAGE_SHAPE)).astype(np.float32)


def torch_logits(x: np.ndarray) -> np.ndarray:
    """The torch model's own outputs for `x`."""
    import torch

    with torch.no_grad():
        return cnn_mlp()(torch.from_numpy(x)).numpy()


@functools.cache
def cnn_mlp_onnx_bytes(batch: int | None = None) -> bytes:
    """The model exported with the dynamo exporter at opset 18.

    batch=None: a dynamic batch axis (the example has batch 2 so it cannot specialise to 1);
    an int: that fixed batch size."""
    import torch

    example = torch.from_numpy(images(batch or 2, seed=99))
    dynamic = None if batch else ({0: torch.export.Dim("batch", min=1, max=1024)},)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            cnn_mlp(),
            (example,),
            None,
            dynamo=True,
            opset_version=18,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    return program.model_proto.SerializeToString()


def write_cnn_mlp(path: Path, batch: int | None = None) -> Path:
    """Write the exported fp32 model to `path` and return it."""
    path = Path(path)
    path.write_bytes(cnn_mlp_onnx_bytes(batch))
    return path


def write_matmul_relu(path: Path, weight: np.ndarray) -> Path:
    """x [N, 4] -> Relu(x @ weight) named y, written as ONNX (opset 17) by onnx's helpers: a two-node
    graph onnxruntime runs, for tests of `qconvert validate` that need no torch export."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", weight.shape[1]])],
        [numpy_helper.from_array(weight.astype(np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def export_small(net, shape: tuple[int, ...], path: Path):  # -> onnx.ModelProto
    """`net` (a torch module) exported with the TorchScript exporter at opset 17 from an example of
    `shape`, input "x" with a dynamic batch axis, output "y": the tiny graphs the recovery tests build."""
    import onnx
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}},
            opset_version=17,
        )
    return onnx.load(str(path))
