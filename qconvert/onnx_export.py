"""LoadedModel -> fp32 ONNX, with a dynamic batch axis.

torch's dynamo exporter first; if it fails, the TorchScript exporter, and the result records
which one was used and why. The output is checked with `onnx.checker` before it is returned.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qconvert.artifacts import save_onnx
from qconvert.errors import ExportError, brief
from qconvert.sources import LoadedModel

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportResult:
    path: Path
    exporter: str  # "dynamo" | "torchscript" | "none (ONNX source)"
    fallback_reason: str | None
    opset: int


def onnx_from_torch(loaded: LoadedModel, opset: int, workdir: Path) -> ExportResult:
    """Export `loaded` to `workdir/fp32.onnx`; an ONNX source is checked and copied."""
    path = workdir / "fp32.onnx"
    if loaded.onnx_path is not None:
        shutil.copyfile(loaded.onnx_path, path)
        for data in loaded.files[1:]:  # its external data files, checked by load_source; same relative paths
            dest = workdir / data.relative_to(loaded.onnx_path.parent)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data, dest)
        return ExportResult(path, "none (ONNX source)", None, _opset_of(path))
    if loaded.kind == "huggingface":
        from qconvert.huggingface import onnx_from_hf

        exporter = onnx_from_hf(loaded, opset, path)
        _check(path)
        return ExportResult(path, exporter, None, _opset_of(path))
    try:
        with quiet_exporter_logs():
            _export_dynamo(loaded, opset, path)
        exporter, reason = "dynamo", None
    except Exception as e:  # the dynamo exporter fails in many ways; all of them mean "try the other"
        reason = f"{type(e).__name__}: {brief(e)}"
        log.warning("dynamo exporter failed (%s); falling back to the TorchScript exporter", reason)
        try:
            with quiet_exporter_logs():
                _export_torchscript(loaded, opset, path)
        except Exception as e2:
            raise ExportError(
                f"exporting {loaded.origin} to ONNX failed with both exporters. dynamo: {reason}. "
                f"TorchScript: {type(e2).__name__}: {brief(e2)}"
            ) from e2
        exporter = "torchscript"
    _check(path)
    return ExportResult(path, exporter, reason, opset)


# torch's exporter logs its own progress and registry notes ("torchvision is not installed. Skipping
# torchvision::nms", ...) at WARNING; they say nothing about the user's model
EXPORTER_LOGGERS = ("torch", "torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporter_logs() -> Iterator[None]:
    """While exporting, the exporter's loggers show errors only, from Python as in the CLI, unless
    qconvert itself logs at DEBUG (`--debug`, or the caller's logging set-up)."""
    if log.isEnabledFor(logging.DEBUG):
        yield
        return
    loggers = [logging.getLogger(name) for name in EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _batch2(examples: tuple[np.ndarray, ...]) -> tuple[object, ...]:
    """Example inputs with a batch of 2, so the exporter cannot specialise the batch axis to 1."""
    import torch

    out = []
    for a in examples:
        t = torch.from_numpy(np.ascontiguousarray(a))
        out.append(torch.cat([t[:1], t[:1]], dim=0) if t.ndim > 0 else t)
    return tuple(out)


def _export_dynamo(loaded: LoadedModel, opset: int, path: Path) -> None:
    import torch

    args = _batch2(loaded.example_inputs)
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = tuple({0: batch} if getattr(a, "ndim", 0) > 0 else None for a in args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            loaded.module,
            args,
            None,
            dynamo=True,
            opset_version=opset,
            input_names=list(loaded.input_names),
            output_names=list(loaded.output_names),
            dynamic_shapes=dynamic,
            external_data=False,
            verbose=False,
        )
    if program is None:
        raise ExportError("the dynamo exporter returned nothing")
    save_onnx(program.model_proto, path)


def _export_torchscript(loaded: LoadedModel, opset: int, path: Path) -> None:
    import torch

    axes = {n: {0: "batch"} for n in (*loaded.input_names, *loaded.output_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            loaded.module,
            _batch2(loaded.example_inputs),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(loaded.input_names),
            output_names=list(loaded.output_names),
            dynamic_axes=axes,
        )


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ExportError(f"the exported model does not pass onnx.checker: {brief(e)}") from e


def _opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
