"""The one stand-in decision (validation/standin.py)."""

from __future__ import annotations

import platform

import onnxruntime as ort
import pytest

from qconvert.targets import Provider
from qconvert.validation.standin import emulation, not_here

CPU = Provider("CPUExecutionProvider")
X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.skipif(not X86, reason="the arm64 target runs natively on an ARM64 machine")
def test_arm64_on_x86_is_not_here_even_on_the_cpu_provider() -> None:
    why = not_here("arm64", [CPU])
    assert why is not None and "not ARM64" in why
    assert not_here("cpu", [CPU]) is None  # the cpu target runs here as it will there


def test_without_a_known_target_only_the_first_provider_counts() -> None:
    assert not_here(None, [CPU]) is None
    missing = next(
        p
        for p in ("TensorrtExecutionProvider", "QNNExecutionProvider")
        if p not in ort.get_available_providers()
    )
    assert not_here(None, [Provider(missing), CPU]) == f"{missing} is not installed here"
    assert not_here("no-such-target", [Provider(missing)]) == f"{missing} is not installed here"


@pytest.mark.parametrize(
    ("mode", "table", "why", "expected"),
    [
        ("static", True, None, "implicit"),
        ("fp16", False, "no fp16 kernels", "fp16"),
        ("bf16", False, "no bf16 kernels", "bf16"),
        ("fp16", False, None, None),
        ("static", False, "not ARM64", None),  # exact Q/DQ arithmetic, but model.onnx itself
        (None, False, None, None),
    ],
)
def test_emulation(mode: str | None, table: bool, why: str | None, expected: str | None) -> None:
    assert emulation(mode, table, why) == expected
