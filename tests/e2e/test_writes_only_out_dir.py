"""A run writes nothing outside OUT_DIR and its temporary folder (issue 11: a static int8 export of a
Hugging Face encoder left onnxruntime's sym_shape_infer_temp.onnx and a UUID-named .data file in the
working directory)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from qconvert.pipeline import export
from qconvert.settings import RunConfig


def _test_hf() -> ModuleType:
    path = Path(__file__).resolve().parent / "test_hf.py"  # tests/e2e/test_hf.py
    spec = importlib.util.spec_from_file_location("qconvert_test_hf", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_hf_encoder_static_int8_writes_nothing_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for module in ("transformers", "tokenizers", "optimum.exporters.onnx"):
        pytest.importorskip(module)
    hf = _test_hf()
    inputs = tmp_path / "inputs"
    bert = hf._bert_folder(inputs / "bert")
    (inputs / "calib.txt").write_text("\n".join(hf.lines(60, 1)) + "\n")
    (inputs / "held.txt").write_text("\n".join(hf.lines(20, 2)) + "\n")
    before = sorted(p.relative_to(inputs) for p in inputs.rglob("*"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    out = tmp_path / "out"
    config = RunConfig(
        source=str(bert),
        bits=8,
        target="cpu",
        calibration=str(inputs / "calib.txt"),
        data=str(inputs / "held.txt"),
        out_dir=out,
    )
    export(config)
    assert list(cwd.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cwd", "inputs", "out"]
    assert sorted(p.relative_to(inputs) for p in inputs.rglob("*")) == before  # inputs untouched
