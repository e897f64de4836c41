"""Train the built-in digits CNN and write its weights and sample data.

Run from anywhere (outputs are placed relative to this file)::

    python models/train_digits.py

Outputs:

* ``models/digits_cnn.pt`` -- plain ``state_dict`` of :class:`digits_cnn.DigitsCNN`.
* ``calibration/digits_calib.npz`` -- 200 normalized training images (``input``)
  plus their ``labels``; used to calibrate quantization.
* ``calibration/digits_heldout.npz`` -- 600 normalized images never used in
  training (``input``) and their ``labels``; used to measure accuracy.

Everything is seeded and single-process, so repeated runs on the same
software stack produce the same weights and the same accuracy.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

MODELS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(MODELS_DIR))

import digits_cnn  # noqa: E402  (needs the path set above)

CALIB_DIR = MODELS_DIR.parent / "calibration"

SEED = 0
HELDOUT_SIZE = 600
CALIB_SIZE = 200
EPOCHS = 40
BATCH_SIZE = 32
MAX_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
MAX_SHIFT = 1  # pixels of random translation used as training augmentation


def split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(train, heldout, calib)`` sample indices.

    ``heldout`` is a stratified sample of :data:`HELDOUT_SIZE` images disjoint
    from ``train``; ``calib`` is a stratified subset of ``train``.
    """
    indices = np.arange(len(labels))
    train, heldout = train_test_split(
        indices,
        test_size=HELDOUT_SIZE,
        stratify=labels,
        random_state=np.random.RandomState(SEED),
    )
    _, calib = train_test_split(
        train,
        test_size=CALIB_SIZE,
        stratify=labels[train],
        random_state=np.random.RandomState(SEED + 1),
    )
    return np.sort(train), np.sort(heldout), np.sort(calib)


def check_normalization(train_pixels: np.ndarray) -> None:
    """Verify the documented mean/std still match the training split."""
    scaled = train_pixels.astype(np.float64) / 16.0
    mean, std = float(scaled.mean()), float(scaled.std())
    print(f"training-split pixel stats after /16: mean={mean:.6f} std={std:.6f}")
    if abs(mean - digits_cnn.PIXEL_MEAN) > 5e-5 or abs(std - digits_cnn.PIXEL_STD) > 5e-5:
        raise SystemExit(
            f"PIXEL_MEAN/PIXEL_STD in models/digits_cnn.py are out of date: expected {mean:.4f}/{std:.4f}"
        )


def random_shift(images: torch.Tensor, background: float, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to :data:`MAX_SHIFT` pixels in x and y.

    Pixels uncovered by the shift are filled with ``background`` (the
    normalized value of a blank pixel).
    """
    size = images.shape[-1]
    span = 2 * MAX_SHIFT + 1
    padded = nn.functional.pad(images, (MAX_SHIFT,) * 4, value=background)
    offsets = torch.randint(0, span * span, (len(images),), generator=generator)
    shifted = torch.empty_like(images)
    for offset in range(span * span):
        chosen = offsets == offset
        dy, dx = divmod(offset, span)
        shifted[chosen] = padded[chosen, :, dy : dy + size, dx : dx + size]
    return shifted


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Fit ``model`` on ``(x, y)`` with AdamW, a one-cycle schedule and shift augmentation."""
    generator = torch.Generator().manual_seed(SEED)
    background = float(digits_cnn.preprocess(np.zeros((1, 64)))[0, 0, 0, 0])
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    steps_per_epoch = (len(x) + BATCH_SIZE - 1) // BATCH_SIZE
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, MAX_LEARNING_RATE, total_steps=EPOCHS * steps_per_epoch
    )
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(EPOCHS):
        order = torch.randperm(len(x), generator=generator)
        total = 0.0
        for start in range(0, len(x), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            inputs = random_shift(x[batch], background, generator)
            loss = loss_fn(model(inputs), y[batch])
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += loss.item() * len(batch)
        if (epoch + 1) % 10 == 0:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(x):.4f}")
    model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy of ``model`` on ``(x, y)``."""
    return float((model(x).argmax(dim=1) == y).float().mean())


def main() -> None:
    """Split the data, train, report held-out accuracy and write all outputs."""
    torch.manual_seed(SEED)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()

    pixels, labels = load_digits(return_X_y=True)
    labels = labels.astype(np.int64)
    train_idx, heldout_idx, calib_idx = split_indices(labels)
    check_normalization(pixels[train_idx])
    inputs = digits_cnn.preprocess(pixels)
    print(f"samples: train={len(train_idx)} heldout={len(heldout_idx)} calib={len(calib_idx)} (from train)")

    x_train = torch.from_numpy(inputs[train_idx])
    y_train = torch.from_numpy(labels[train_idx])
    model = digits_cnn.DigitsCNN()
    train(model, x_train, y_train)

    train_acc = accuracy(model, x_train, y_train)
    heldout_acc = accuracy(
        model, torch.from_numpy(inputs[heldout_idx]), torch.from_numpy(labels[heldout_idx])
    )
    elapsed = time.perf_counter() - started
    print(f"train accuracy   {train_acc:.4f}")
    print(f"held-out accuracy {heldout_acc:.4f} ({len(heldout_idx)} samples)")
    print(f"training time    {elapsed:.1f}s")

    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    torch.save(state, digits_cnn.WEIGHTS_PATH)
    CALIB_DIR.mkdir(exist_ok=True)
    np.savez_compressed(CALIB_DIR / "digits_calib.npz", input=inputs[calib_idx], labels=labels[calib_idx])
    np.savez_compressed(
        CALIB_DIR / "digits_heldout.npz", input=inputs[heldout_idx], labels=labels[heldout_idx]
    )
    print(
        f"wrote {digits_cnn.WEIGHTS_PATH.relative_to(MODELS_DIR.parent)}, "
        f"calibration/digits_calib.npz, calibration/digits_heldout.npz"
    )


if __name__ == "__main__":
    main()
