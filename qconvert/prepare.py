"""fp32 ONNX -> prepared ONNX: shape inference and graph clean-up before quantization."""

from __future__ import annotations

import logging
from pathlib import Path

from qconvert.errors import PrepareError

log = logging.getLogger(__name__)


def prepared_from_onnx(src: Path, dest: Path, external_data: bool = False) -> Path:
    """Run onnxruntime's quantization pre-processing (symbolic shape inference, constant
    folding and basic fusions, ONNX shape inference). Symbolic inference fails on some graphs;
    then it is skipped and plain ONNX shape inference is used."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    save = {
        "save_as_external_data": external_data,
        "all_tensors_to_one_file": True,
        "external_data_location": f"{dest.name}.data",
    }
    try:
        quant_pre_process(str(src), str(dest), skip_symbolic_shape=False, **save)
    except Exception as first:
        log.info("symbolic shape inference failed (%s); using ONNX shape inference only", first)
        try:
            quant_pre_process(str(src), str(dest), skip_symbolic_shape=True, **save)
        except Exception as e:
            raise PrepareError(f"preparing {src.name} for quantization failed: {e}") from e
    import onnx

    try:
        onnx.checker.check_model(str(dest))
    except Exception as e:
        raise PrepareError(f"the prepared model does not pass onnx.checker: {e}") from e
    return dest
