"""Small trained models for the 4-bit and bf16 tests, exported once per process with torch's dynamo
exporter.

- `mlp`: a 3-layer MLP (Linear 32->128->128->10, so torch exports three Gemms) for ten Gaussian
  clusters; its calibration and held-out sets come from the same distribution, with labels.
- `block`: a pre-norm transformer block (embedding table, multi-head attention, GELU MLP, a linear
  head on the mean-pooled sequence) that tells which of four token classes is most frequent in a
  sequence (about half of each sequence's tokens are of that class).

Both are trained the cheap way, which keeps the tests fast on two shared cores: the body keeps its
seeded initialisation and the head is fitted by least squares to the one-hot labels of 512 training
samples (a linear probe), which gives logits with real margins. `CONVNET` is a SOURCE file with
nothing 4-bit-quantizable.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MLP_FEATURES, MLP_CLASSES = 32, 10
VOCAB, SEQ, DIM, TOKEN_CLASSES = 64, 12, 32, 4


@dataclass(frozen=True)
class Exported:
    onnx: bytes
    input_name: str
    calibration: dict[str, np.ndarray]
    heldout: dict[str, np.ndarray]  # with "labels"

    def write(self, folder: Path, name: str) -> tuple[Path, Path, Path]:
        """(model.onnx, calibration.npz, heldout.npz) under `folder`."""
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / f"{name}.onnx"
        model.write_bytes(self.onnx)
        calib, held = folder / f"{name}_calib.npz", folder / f"{name}_heldout.npz"
        np.savez(calib, **self.calibration)
        np.savez(held, **self.heldout)
        return model, calib, held


def _export(module, example, input_name: str, dynamic_axes: int) -> bytes:
    import torch

    dims = {i: torch.export.Dim(f"d{i}", min=1, max=1024) for i in range(dynamic_axes)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module,
            (example,),
            None,
            dynamo=True,
            opset_version=18,
            input_names=[input_name],
            output_names=["logits"],
            dynamic_shapes=(dims,),
            external_data=False,
            verbose=False,
        )
    return bytes(program.model_proto.SerializeToString())


def _fit_head(body, head, inputs, labels: np.ndarray, classes: int) -> None:
    """Set the Linear `head` to the least-squares map from body(inputs) to scaled one-hot labels."""
    import torch

    with torch.no_grad():
        feats = body(inputs).numpy().astype(np.float64)
    design = np.hstack([feats, np.ones((len(feats), 1))])
    target = np.eye(classes)[labels] * 8.0 - 4.0  # margins of a few logits
    solution = np.linalg.lstsq(
        design.T @ design + 1e-3 * np.eye(design.shape[1]), design.T @ target, rcond=None
    )[0]
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(solution[:-1].T.astype(np.float32)))
        head.bias.copy_(torch.from_numpy(solution[-1].astype(np.float32)))


def _clusters(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    centers = np.random.default_rng(7).standard_normal((MLP_CLASSES, MLP_FEATURES)) * 1.2
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, MLP_CLASSES, n)
    return (centers[labels] + rng.standard_normal((n, MLP_FEATURES))).astype(np.float32), labels


@functools.cache
def mlp() -> Exported:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(MLP_FEATURES, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, MLP_CLASSES)
    )
    x, y = _clusters(512, seed=1)
    _fit_head(model[:-1], model[-1], torch.from_numpy(x), y, MLP_CLASSES)
    model.eval()
    calib, _ = _clusters(128, seed=2)
    held, labels = _clusters(300, seed=3)
    return Exported(
        _export(model, torch.from_numpy(held[:2]), "features", 1),
        "features",
        {"features": calib},
        {"features": held, "labels": labels},
    )


def _tokens(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sequences in which about half the tokens come from the label's class (token id % 4), so the
    most frequent class is clear and the model's logits have margins."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, TOKEN_CLASSES, n)
    uniform = rng.integers(0, VOCAB, (n, SEQ))
    of_label = rng.integers(0, VOCAB // TOKEN_CLASSES, (n, SEQ)) * TOKEN_CLASSES + labels[:, None]
    ids = np.where(rng.random((n, SEQ)) < 0.5, of_label, uniform)
    counts = np.stack([(ids % TOKEN_CLASSES == c).sum(1) for c in range(TOKEN_CLASSES)], 1)
    return ids.astype(np.int64), counts.argmax(1)


@functools.cache
def block() -> Exported:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(VOCAB, DIM)
            self.norm1, self.norm2 = nn.LayerNorm(DIM), nn.LayerNorm(DIM)
            self.attn = nn.MultiheadAttention(DIM, 4, batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(DIM, 4 * DIM), nn.GELU(), nn.Linear(4 * DIM, DIM))
            self.head = nn.Linear(DIM, TOKEN_CLASSES)

        def features(self, ids: torch.Tensor) -> torch.Tensor:
            x = self.emb(ids)
            y = self.norm1(x)
            x = x + self.attn(y, y, y, need_weights=False)[0]
            x = x + self.mlp(self.norm2(x))
            return x.mean(1)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.features(ids))

    torch.manual_seed(0)
    model = Block()
    model.eval()
    ids, labels = _tokens(512, seed=1)
    _fit_head(lambda t: model.features(t), model.head, torch.from_numpy(ids), labels, TOKEN_CLASSES)
    model.eval()
    calib, _ = _tokens(64, seed=2)
    held, held_labels = _tokens(256, seed=3)
    return Exported(
        _export(model, torch.from_numpy(held[:2]), "ids", 1),
        "ids",
        {"ids": calib},
        {"ids": held, "labels": held_labels},
    )


CONVNET = """
import torch
from torch import nn


def build():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    ).eval()


def example_inputs():
    return (torch.zeros(1, 1, 8, 8),)
"""
