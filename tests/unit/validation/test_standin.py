"""The one stand-in decision (validation/standin.py)."""

from __future__ import annotations

import platform
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from _models import write_matmul_relu

from qconvert.results import Manifest
from qconvert.targets import TARGETS, Provider
from qconvert.validation.standin import emulation, for_folder, not_here, reference_onnx, runs_native

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


# --- export and validate of one folder decide the same way, for every target ---------------------


def _linear(folder: Path) -> tuple[Path, Path]:
    """A MatMul + Relu fp32 .onnx with 128 weights (coreml's weight-only int8 takes no fewer) and 200
    held-out rows for it: small enough to export for every target."""
    rng = np.random.default_rng(0)
    source = write_matmul_relu(folder / "linear.onnx", rng.standard_normal((4, 32)))
    data = folder / "data.npz"
    np.savez(data, x=rng.standard_normal((200, 4)).astype(np.float32))
    return source, data


@pytest.mark.parametrize(
    ("target", "bits", "options"),
    [(name, 8, ()) for name in TARGETS.names()]
    + [("cuda", 16, ()), ("tensorrt", 8, (("quantization", "implicit"),))],
)
def test_export_validate_and_sweep_decide_the_same_for_one_folder(
    tmp_path: Path, target: str, bits: int, options: tuple[tuple[str, str], ...]
) -> None:
    """The graph validation runs and how (the provider's fused kernels, or the exact Q/DQ arithmetic
    with graph optimizations off): what export recorded is what `qconvert validate` of its folder
    and the sweep's collapse probe decide on this machine (validation/standin.py)."""
    import qconvert
    from qconvert.pipeline import export
    from qconvert.settings import RunConfig, ValidateConfig

    source, data = _linear(tmp_path)
    config = RunConfig(
        source=str(source), target=target, bits=bits, target_options=options, data=str(data),
        calibration=str(data), out_dir=tmp_path / "out", tolerance="cosine>=-1", latency_repeats=3,
    )  # fmt: skip
    exported = export(config).record
    run = qconvert.validate(ValidateConfig(candidate=tmp_path / "out", settings_dir=None)).report
    assert (run.provider, run.exact_qdq) == (exported.validated_on, exported.validation_exact_qdq)
    folder = for_folder(tmp_path / "out", Manifest.load(tmp_path / "out"))
    assert folder.stand_in == exported.stand_in
    assert folder.native is not exported.validation_exact_qdq or folder.stand_in == "implicit"
    # the decision itself: exact Q/DQ arithmetic exactly where the target is not here or a stand-in runs
    assert exported.validation_exact_qdq is not runs_native(folder.not_here, exported.stand_in is not None)


def test_the_fp32_onnx_reference_is_the_given_onnx_else_the_out_dirs(tmp_path: Path) -> None:
    """PlanChecks decides it once (the probe and a speedup bound need it; RunReference reads it)."""
    assert reference_onnx("ref.onnx", None) == Path("ref.onnx")  # RunReference says if it is missing
    assert reference_onnx("model.py:build", None) is None  # a bare .onnx candidate, a torch reference
    assert reference_onnx("model.py:build", tmp_path) is None  # an OUT_DIR without reference.onnx
    (tmp_path / "reference.onnx").write_bytes(b"")
    assert reference_onnx("model.py:build", tmp_path) == tmp_path / "reference.onnx"
    assert reference_onnx(str(tmp_path / "other.onnx"), tmp_path) == tmp_path / "other.onnx"
