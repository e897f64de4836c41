"""Train the built-in copy/count transformer and write its weights and sample data.

Run from anywhere (outputs are placed relative to this file)::

    python models/train_copycount.py

Outputs:

* ``models/copycount.pt`` -- plain ``state_dict`` of :class:`copycount.CopyCount`.
* ``calibration/copycount_calib.npz`` -- 256 sequences from the training distribution (``tokens``)
  and their counts (``labels``); used to calibrate quantization.
* ``calibration/copycount_heldout.npz`` -- 1000 distinct sequences drawn from a separate random
  stream, none of them in the calibration file (``tokens``), and their counts (``labels``); used
  to validate.

The task is synthetic, so there is no data set to download: every training batch is drawn fresh
from a seeded generator. Everything is seeded and single-process, so repeated runs on the same
software stack produce the same weights.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODELS_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(MODELS_DIR))

import copycount  # noqa: E402  (needs the path set above)

CALIB_DIR = MODELS_DIR.parent / "calibration"

SEED = 0
HELDOUT_SEED = 1_000_003  # a separate stream for the held-out set
CALIB_SEED = 2_000_003
STEPS = 1500
BATCH_SIZE = 128
MAX_LEARNING_RATE = 3e-3
WEIGHT_DECAY = 1e-2
CALIB_SIZE = 256
HELDOUT_SIZE = 1000
# share of sequences that are one symbol repeated (count = length) and that are the first symbol
# followed by one repeated filler (count = 1): the shapes the collapse probe builds
ALL_SAME = 0.25
FIRST_THEN_FILLER = 0.2


def sequences(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` random sequences: (tokens ``[n, MAX_LEN]`` int64, count targets, copy targets).

    Each sequence has a length L in 1..MAX_LEN and a first symbol; the first symbol recurs at
    m-1 further random positions (m = the count), the other positions hold a filler: random
    symbols other than the first, or one such symbol repeated. Positions from L on are padding."""
    s, symbols = copycount.MAX_LEN, copycount.VOCAB - 1
    length = rng.integers(1, s + 1, n)
    first = rng.integers(1, symbols + 1, n)
    kind = rng.random(n)
    count = np.where(kind < ALL_SAME, length, rng.integers(1, length + 1))
    count = np.where((kind >= ALL_SAME) & (kind < ALL_SAME + FIRST_THEN_FILLER), 1, count)
    # fillers: uniform over the symbols other than `first`, either fresh per position or one repeated
    fresh = rng.integers(1, symbols, (n, s))
    fresh += fresh >= first[:, None]
    repeated = rng.integers(1, symbols, n)
    repeated += repeated >= first
    one_filler = (rng.random(n) < 0.5) | (kind >= ALL_SAME)
    tokens = np.where(one_filler[:, None], repeated[:, None], fresh)
    # the first symbol sits at position 0 and at the count-1 positions in 1..L-1 with the lowest keys
    keys = rng.random((n, s))
    position = np.arange(s)[None, :]
    keys[:, 0] = -1.0
    keys[position >= length[:, None]] = 2.0
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    tokens = np.where(rank < count[:, None], first[:, None], tokens)
    tokens = np.where(position < length[:, None], tokens, copycount.PAD)
    return tokens.astype(np.int64), count.astype(np.int64), first.astype(np.int64)


def disjoint_heldout(calibration: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HELDOUT_SIZE distinct sequences, none of them in `calibration`.

    Short sequences repeat by chance (there are only 15 of length 1), so draws are filtered. The
    training batches are not excluded: they cover every short sequence many times over, so for
    this synthetic task "held out" means a separate random stream, not unseen sequences."""
    tokens, count, first = sequences(np.random.default_rng(HELDOUT_SEED), 2 * HELDOUT_SIZE)
    seen = {row.tobytes() for row in calibration}
    keep = []
    for i, row in enumerate(tokens):
        key = row.tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    index = np.array(keep[:HELDOUT_SIZE])
    if len(index) < HELDOUT_SIZE:
        raise SystemExit(f"only {len(index)} distinct held-out sequences; draw more")
    return tokens[index], count[index], first[index]


def train(model: nn.Module) -> None:
    """Fit both heads with AdamW and a one-cycle schedule on fresh batches."""
    rng = np.random.default_rng(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=MAX_LEARNING_RATE, weight_decay=WEIGHT_DECAY)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, MAX_LEARNING_RATE, total_steps=STEPS)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total = 0.0
    for step in range(STEPS):
        tokens, count, first = (torch.from_numpy(a) for a in sequences(rng, BATCH_SIZE))
        optimizer.zero_grad()
        count_scores, copy_scores = model(tokens)
        loss = loss_fn(count_scores, count) + loss_fn(copy_scores, first)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total += loss.item()
        if (step + 1) % 250 == 0:
            print(f"step {step + 1:5d}  train loss {total / 250:.4f}", flush=True)
            total = 0.0
    model.eval()


@torch.no_grad()
def report(model: nn.Module, tokens: np.ndarray, count: np.ndarray, first: np.ndarray) -> None:
    """Held-out accuracy of both heads, and of the count head per length of all-same sequences."""
    count_scores, copy_scores = model(torch.from_numpy(tokens))
    print(f"held-out count accuracy {float((count_scores.argmax(1).numpy() == count).mean()):.4f}")
    print(f"held-out copy accuracy  {float((copy_scores.argmax(1).numpy() == first).mean()):.4f}")
    rows = []
    for n in range(1, copycount.MAX_LEN + 1):
        same = np.zeros((copycount.VOCAB - 1, copycount.MAX_LEN), dtype=np.int64)
        same[:, :n] = np.arange(1, copycount.VOCAB)[:, None]
        predicted = model(torch.from_numpy(same))[0].argmax(1).numpy()
        rows.append(f"{n}:{int((predicted == n).sum())}")
    print("all-same sequences, count right of 15 per length: " + " ".join(rows))


def main() -> None:
    """Train, report held-out accuracy and write all outputs."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)  # 2 threads are slower for a model this small
    torch.use_deterministic_algorithms(True)
    started, cpu_started = time.perf_counter(), time.process_time()
    model = copycount.CopyCount()
    print(f"parameters: {sum(p.numel() for p in model.parameters()):,}")
    train(model)
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    calib = sequences(np.random.default_rng(CALIB_SEED), CALIB_SIZE)
    heldout = disjoint_heldout(calib[0])
    report(model, *heldout)
    print(f"training time {elapsed:.1f}s wall, {cpu:.1f}s CPU (one thread)")

    state = {name: tensor.detach().clone().contiguous() for name, tensor in model.state_dict().items()}
    torch.save(state, copycount.WEIGHTS_PATH)
    CALIB_DIR.mkdir(exist_ok=True)
    np.savez_compressed(CALIB_DIR / "copycount_calib.npz", tokens=calib[0], labels=calib[1])
    np.savez_compressed(CALIB_DIR / "copycount_heldout.npz", tokens=heldout[0], labels=heldout[1])
    print(
        f"wrote {copycount.WEIGHTS_PATH.relative_to(MODELS_DIR.parent)}, "
        "calibration/copycount_calib.npz, calibration/copycount_heldout.npz"
    )


if __name__ == "__main__":
    main()
