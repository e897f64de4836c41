"""Built-in sequence model: a tiny transformer that copies and counts.

Trained by ``models/train_copycount.py`` (seeded, about a minute on 2 CPU cores), which also writes
the committed weights (``models/copycount.pt``) and the sample data in ``calibration/``.

It exists to show what quantization does to a transformer's ability to tell sequences apart
(`qconvert validate --probe collapse`): copying a token and counting repeats both rest on
attention weights that shrink as sequences grow, and low-precision arithmetic rounds small
differences between them away first.

Input convention
----------------
``tokens``: int64 ``[N, MAX_LEN]``. Token 0 is padding and may only follow the sequence (right
padding); tokens 1..VOCAB-1 are symbols. A sequence holds 1..MAX_LEN symbols.

Outputs (class scores, both read from a learned summary position that attends to every symbol):

- ``count`` ``[N, MAX_LEN + 1]``: how many times the first symbol occurs in the sequence (1..MAX_LEN).
- ``copy``  ``[N, VOCAB]``: the first symbol of the sequence.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

# qconvert names the ONNX inputs and outputs after these when they are present.
INPUT_NAMES = ("tokens",)
OUTPUT_NAMES = ("count", "copy")  # count first: it is the output accuracy is measured on

VOCAB = 16  # token 0 = PAD, 1..15 = symbols
PAD = 0
MAX_LEN = 32
D_MODEL = 64
HEADS = 4
LAYERS = 2
MLP = 128
SEQ = MAX_LEN + 1  # positions inside the model: the summary, then the tokens
MASK_BIAS = -30.0  # added to the attention scores of padding keys: e^-30 is 0 in practice, and a
# moderate value keeps the score tensor's range (and so its int8 scale) ordinary

WEIGHTS_PATH = Path(__file__).with_name("copycount.pt")


class Attention(nn.Module):
    """Multi-head self-attention written out as MatMul / Softmax / MatMul, the ops quantizers take."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.out = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        # reshapes use -1 for the batch and constants elsewhere, so the graph needs no Shape nodes
        q, k, v = self.qkv(x).reshape(-1, SEQ, 3, HEADS, D_MODEL // HEADS).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(D_MODEL // HEADS)) + bias
        mixed = torch.softmax(scores, dim=-1) @ v  # [n, heads, SEQ, head_dim]
        return self.out(mixed.transpose(1, 2).reshape(-1, SEQ, D_MODEL))


class Block(nn.Module):
    """Pre-LayerNorm transformer block with a ReLU MLP."""

    def __init__(self) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(D_MODEL)
        self.attn = Attention()
        self.norm2 = nn.LayerNorm(D_MODEL)
        self.mlp = nn.Sequential(nn.Linear(D_MODEL, MLP), nn.ReLU(), nn.Linear(MLP, D_MODEL))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x), bias)
        return x + self.mlp(self.norm2(x))


class CopyCount(nn.Module):
    """Token + learned position embeddings, a learned summary vector prepended as position 0,
    LAYERS transformer blocks with padding masked out, and two linear heads on the summary."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D_MODEL)
        self.position = nn.Parameter(torch.randn(MAX_LEN, D_MODEL) * 0.02)
        self.summary = nn.Embedding(1, D_MODEL)  # looked up with index 0: one vector per sequence
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(D_MODEL)
        self.copy_head = nn.Linear(D_MODEL, VOCAB)
        self.count_head = nn.Linear(D_MODEL, MAX_LEN + 1)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map ``tokens`` ``[N, MAX_LEN]`` to (count ``[N, MAX_LEN + 1]``, copy ``[N, VOCAB]``) scores."""
        zero = tokens[:, :1] * 0  # [n, 1] zeros, without reading the batch size from a Shape node
        x = torch.cat([self.summary(zero), self.embed(tokens) + self.position], dim=1)
        keys = torch.cat([zero + 1, tokens], dim=1)  # the summary position is never padding
        bias = ((keys == PAD).to(x.dtype) * MASK_BIAS)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        summary = self.norm(x[:, 0])
        return self.count_head(summary), self.copy_head(summary)


def copycount() -> nn.Module:
    """Build :class:`CopyCount`, load the committed weights and return it in eval mode."""
    model = CopyCount()
    state = torch.load(WEIGHTS_PATH, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


def example_inputs() -> tuple[torch.Tensor, ...]:
    """One example batch for export: the sequence 1 2 3, padded."""
    tokens = torch.zeros(1, MAX_LEN, dtype=torch.int64)
    tokens[0, :3] = torch.tensor([1, 2, 3])
    return (tokens,)
