"""Built-in default model: a small convolutional classifier for 8x8 handwritten digits.

The network is trained on scikit-learn's bundled ``load_digits`` data set
(1797 grayscale 8x8 images, 10 classes) by ``models/train_digits.py``, which
also writes the committed weights (``models/digits_cnn.pt``) and the sample
data in ``calibration/``.

Input convention
----------------
The model itself contains no preprocessing. It expects float32 tensors of
shape ``[N, 1, 8, 8]`` that have already been normalized with :func:`preprocess`:
raw pixel values (integers 0..16) are divided by 16 and then standardized with
the scalar :data:`PIXEL_MEAN` / :data:`PIXEL_STD`, which were measured on the
training split. The arrays in ``calibration/*.npz`` are stored in this
normalized form.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

# qconvert names the ONNX inputs and outputs after these when they are present.
INPUT_NAMES = ("input",)
OUTPUT_NAMES = ("logits",)

NUM_CLASSES = 10
IMAGE_SIZE = 8

#: Mean and standard deviation of the training-split pixels after scaling to
#: [0, 1] (rounded to 4 decimals). ``train_digits.py`` recomputes them and
#: refuses to run if they drift from these values.
PIXEL_MEAN = 0.3054
PIXEL_STD = 0.3759

WEIGHTS_PATH = Path(__file__).with_name("digits_cnn.pt")


def preprocess(images: np.ndarray) -> np.ndarray:
    """Turn raw ``load_digits`` pixels (0..16) into normalized model input.

    Accepts an array of shape ``[N, 64]`` or ``[N, 8, 8]`` (or already
    ``[N, 1, 8, 8]``) and returns a contiguous float32 array ``[N, 1, 8, 8]``.
    """
    x = np.asarray(images, dtype=np.float32).reshape(-1, 1, IMAGE_SIZE, IMAGE_SIZE)
    x = (x / np.float32(16.0) - np.float32(PIXEL_MEAN)) / np.float32(PIXEL_STD)
    return np.ascontiguousarray(x, dtype=np.float32)


class DigitsCNN(nn.Module):
    """Three 3x3 convolutions, one 2x2 max-pool and a two-layer MLP head.

    Shapes: ``[N, 1, 8, 8]`` -> conv 16 -> conv 32 -> maxpool -> ``[N, 32, 4, 4]``
    -> conv 32 -> flatten 512 -> linear 64 -> linear 10 (logits).
    Exported to ONNX it uses only Conv, Relu, MaxPool, Reshape and Gemm.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(kernel_size=2),
            nn.Conv2d(32, 32, kernel_size=3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map normalized images ``[N, 1, 8, 8]`` to class logits ``[N, 10]``."""
        return self.classifier(self.features(x))


def digits_cnn() -> nn.Module:
    """Build :class:`DigitsCNN`, load the committed weights and return it in eval mode."""
    model = DigitsCNN()
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def example_inputs() -> tuple[torch.Tensor, ...]:
    """Return a single example input batch (one all-zero image) for tracing/export."""
    return (torch.zeros(1, 1, IMAGE_SIZE, IMAGE_SIZE, dtype=torch.float32),)
