"""Targets, by name. Adding a target is one module here plus one `TARGETS.register` line; a third
party registers one through the `qconvert.targets` entry-point group (registry.load_plugins). The
pipeline uses a target bound to its options: `TARGETS.get(name).bind(options)` (a BoundTarget)."""

from __future__ import annotations

from qconvert.registry import Registry
from qconvert.targets.arm64 import ARM64
from qconvert.targets.base import (
    BoundTarget,
    Options,
    Provider,
    Target,
    TargetOption,
    Violation,
    graph_violations,
    has_qdq,
)
from qconvert.targets.coreml import COREML_TARGET
from qconvert.targets.cpu import CPU
from qconvert.targets.cuda import CUDA_TARGET
from qconvert.targets.openvino import OPENVINO
from qconvert.targets.qnn import QNN
from qconvert.targets.tensorrt import TENSORRT

TARGETS: Registry[Target] = Registry("target", "--target")
TARGETS.register(CPU.name)(CPU)
TARGETS.register(TENSORRT.name)(TENSORRT)
TARGETS.register(CUDA_TARGET.name)(CUDA_TARGET)
TARGETS.register(COREML_TARGET.name)(COREML_TARGET)
TARGETS.register(ARM64.name)(ARM64)
TARGETS.register(OPENVINO.name)(OPENVINO)
TARGETS.register(QNN.name)(QNN)
TARGETS.plugins("qconvert.targets")

__all__ = [
    "TARGETS",
    "BoundTarget",
    "Options",
    "Provider",
    "Target",
    "TargetOption",
    "Violation",
    "graph_violations",
    "has_qdq",
]
