"""Targets, by name. Adding a target is one module here plus one `TARGETS.register` line."""

from __future__ import annotations

from qconvert.registry import Registry
from qconvert.targets.base import Options, Provider, Target, TargetOption, graph_violations, has_qdq
from qconvert.targets.cpu import CPU
from qconvert.targets.tensorrt import TENSORRT

TARGETS: Registry[Target] = Registry("target", "--target")
TARGETS.register(CPU.name)(CPU)
TARGETS.register(TENSORRT.name)(TENSORRT)

__all__ = ["TARGETS", "Options", "Provider", "Target", "TargetOption", "graph_violations", "has_qdq"]
