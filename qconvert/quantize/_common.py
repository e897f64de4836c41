"""Pieces shared by the onnxruntime-backed quantizers."""

from __future__ import annotations

from pathlib import Path

from qconvert.errors import QuantizationError

QUANT_TYPES = {"int8": "QInt8", "uint8": "QUInt8", "int16": "QInt16", "uint16": "QUInt16"}


def quant_type(name: str) -> object:
    from onnxruntime.quantization import QuantType

    return getattr(QuantType, QUANT_TYPES[name])


def check_output(path: Path) -> Path:
    """The quantized model must exist and pass onnx.checker."""
    import onnx

    if not path.exists():
        raise QuantizationError("the quantizer finished without writing a model")
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise QuantizationError(f"the quantized model does not pass onnx.checker: {e}") from e
    return path


def unique_name(name: str, taken: set[str]) -> str:
    """`name`, or `name_1`, `name_2`... whichever is not in `taken`; the result is added to `taken`."""
    out, i = name, 1
    while out in taken:
        out, i = f"{name}_{i}", i + 1
    taken.add(out)
    return out
