"""Four small real models for the mode x target matrix: a CNN, an MLP, an LSTM and a transformer block.

Each is trained briefly (seeded, full-batch Adam, a second or less) on a synthetic classification
task whose samples keep a clear margin from the class boundaries: every class has a template and a
sample is its template plus noise. A trained model then puts most held-out samples far from a
decision boundary, so "top-1 agreement within tolerance" measures quantization error rather than
coin flips on knife-edge samples.

`write_model_file` writes a SOURCE file (`file.py:build` with `example_inputs()`) that rebuilds the
trained model from a state dict saved beside it; `write_data` writes calibration and held-out .npz
files with labels. torch is imported lazily, as everywhere in the tests.
"""

from __future__ import annotations

import functools
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRAIN_SAMPLES = 256
CALIBRATION_SAMPLES = 128
HELDOUT_SAMPLES = 256
OUTPUT_NAME = "logits"


@dataclass(frozen=True)
class MatrixModel:
    """A model of the matrix: its input, its classes, and how long it trains."""

    name: str
    input_name: str
    sample_shape: tuple[int, ...]  # one sample, without the batch axis
    classes: int
    noise: float  # standard deviation of the noise added to the class template
    steps: int  # full-batch Adam steps
    lr: float


MODELS: dict[str, MatrixModel] = {
    m.name: m
    for m in (
        MatrixModel("cnn", "image", (1, 12, 12), 4, noise=0.5, steps=40, lr=0.03),
        MatrixModel("mlp", "features", (24,), 5, noise=1.2, steps=150, lr=0.01),
        MatrixModel("lstm", "sequence", (10, 6), 4, noise=1.0, steps=100, lr=0.03),
        MatrixModel("transformer", "tokens", (8, 16), 4, noise=1.2, steps=100, lr=0.01),
    )
}


def _cnn() -> Any:
    """conv -> batchnorm -> relu -> maxpool -> conv -> batchnorm -> relu -> maxpool -> linear."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 12, 3, padding=1),
        nn.BatchNorm2d(12),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(12 * 3 * 3, 4),
    )


def _mlp() -> Any:
    from torch import nn

    return nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 5))


def _lstm() -> Any:
    import torch
    from torch import nn

    class LstmClassifier(nn.Module):
        """[N, 10, 6] -> one LSTM layer (hidden 16) -> its last hidden state -> linear -> [N, 4]."""

        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(6, 16, batch_first=True)
            self.head = nn.Linear(16, 4)

        def forward(self, sequence: torch.Tensor) -> torch.Tensor:
            _, (hidden, _) = self.lstm(sequence)
            return self.head(hidden[-1])

    return LstmClassifier()


def _transformer() -> Any:
    import torch
    from torch import nn

    class Block(nn.Module):
        """[N, 8, 16] -> pre-norm self-attention (2 heads) and GELU MLP, both residual -> mean over
        the sequence -> linear -> [N, 4]. Written out by hand so that the graph is plain MatMul,
        Softmax and LayerNormalization, whatever torch's fused attention paths do."""

        def __init__(self, d: int = 16, heads: int = 2) -> None:
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(d)
            self.qkv = nn.Linear(d, 3 * d)
            self.proj = nn.Linear(d, d)
            self.norm2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
            self.head = nn.Linear(d, 4)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            n, s, d = tokens.shape
            q, k, v = self.qkv(self.norm1(tokens)).chunk(3, dim=-1)
            split = [n, s, self.heads, d // self.heads]
            q, k, v = (t.reshape(split).transpose(1, 2) for t in (q, k, v))
            weights = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1)
            x = tokens + self.proj((weights @ v).transpose(1, 2).reshape(n, s, d))
            x = x + self.mlp(self.norm2(x))
            return self.head(x.mean(dim=1))

    return Block()


BUILDERS = {"cnn": _cnn, "mlp": _mlp, "lstm": _lstm, "transformer": _transformer}


def build_module(name: str) -> Any:
    """A fresh, untrained module for model `name` (seeded, so its initial weights are fixed)."""
    import torch

    torch.manual_seed(0)
    return BUILDERS[name]()


def _templates(model: MatrixModel) -> np.ndarray:
    """One template per class. The CNN's are line patterns (horizontal, vertical, two diagonals);
    the others are seeded random patterns, scaled so the classes are well apart."""
    if model.name == "cnn":
        size = model.sample_shape[-1]
        eye = np.eye(size, dtype=np.float32)
        bars = [np.zeros((size, size), np.float32) for _ in range(2)]
        bars[0][size // 2 - 1 : size // 2 + 1, :] = 1.0
        bars[1][:, size // 2 - 1 : size // 2 + 1] = 1.0
        return np.stack([bars[0], bars[1], eye, eye[::-1]])[:, None] * 1.5
    rng = np.random.default_rng(1234)
    return rng.standard_normal((model.classes, *model.sample_shape)).astype(np.float32)


def samples(model: MatrixModel, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs [n, *sample_shape] float32, labels [n] int64): class templates plus seeded noise;
    the CNN's patterns are also shifted by up to two pixels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, model.classes, size=n).astype(np.int64)
    x = _templates(model)[labels].copy()
    if model.name == "cnn":
        shifts = rng.integers(-2, 3, size=(n, 2))
        x = np.stack([np.roll(img, tuple(s), axis=(1, 2)) for img, s in zip(x, shifts, strict=True)])
    x += rng.normal(0.0, model.noise, size=x.shape).astype(np.float32)
    return x.astype(np.float32), labels


@functools.cache
def trained_state(name: str) -> dict[str, Any]:
    """The trained weights of model `name` (a state dict), trained once per process."""
    import torch

    model = MODELS[name]
    module = build_module(name)
    x, y = samples(model, TRAIN_SAMPLES, seed=1)
    inputs, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.Adam(module.parameters(), lr=model.lr)
    module.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is several times faster than two fighting
    try:
        for _ in range(model.steps):
            loss = torch.nn.functional.cross_entropy(module(inputs), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        torch.set_num_threads(threads)
    return {k: v.detach().clone() for k, v in module.eval().state_dict().items()}


def trained(name: str) -> Any:
    """Model `name` with its trained weights, in eval mode."""
    module = build_module(name)
    module.load_state_dict(trained_state(name))
    return module.eval()


MODEL_FILE = '''
"""The trained {name} of the qconvert mode x target matrix (written by tests/_matrix_models.py)."""

from pathlib import Path

import torch

from _matrix_models import build_module

INPUT_NAMES = ("{input_name}",)
OUTPUT_NAMES = ("{output_name}",)


def build():
    model = build_module("{name}")
    model.load_state_dict(torch.load(Path(__file__).with_name("{name}.pt"), weights_only=True))
    return model.eval()


def example_inputs():
    return (torch.zeros(1, {shape}),)
'''


def write_model_file(name: str, folder: Path) -> Path:
    """Write `<name>_model.py` (factory `build`, `example_inputs`) and its weights into `folder`;
    return the .py file. The factory imports this module, as a user's file imports its package."""
    import torch

    model = MODELS[name]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trained_state(name), folder / f"{name}.pt")
    path = folder / f"{name}_model.py"
    text = MODEL_FILE.format(
        name=name,
        input_name=model.input_name,
        output_name=OUTPUT_NAME,
        shape=", ".join(map(str, model.sample_shape)),
    )
    path.write_text(textwrap.dedent(text).lstrip())
    return path


def write_data(name: str, folder: Path) -> tuple[Path, Path]:
    """Write `<name>_calibration.npz` and `<name>_heldout.npz` (keyed by the input name, with
    `labels`) into `folder`; the two sets are drawn with different seeds. Returns both paths."""
    model = MODELS[name]
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, n, seed in (("calibration", CALIBRATION_SAMPLES, 2), ("heldout", HELDOUT_SAMPLES, 3)):
        x, y = samples(model, n, seed)
        path = folder / f"{name}_{kind}.npz"
        np.savez(path, **{model.input_name: x, "labels": y})
        paths.append(path)
    return paths[0], paths[1]


def torch_accuracy(name: str, x: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy of the trained torch model on (x, labels)."""
    import torch

    with torch.no_grad():
        logits = trained(name)(torch.from_numpy(x)).numpy()
    return float((logits.argmax(1) == labels).mean())
