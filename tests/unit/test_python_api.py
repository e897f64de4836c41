"""The Python API takes plain paths (issue 14): every path in the configs accepts str and any
os.PathLike; `dir(qconvert)` is the public API; the torch exporter stays quiet from Python too."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import qconvert
from qconvert.settings import BenchmarkConfig, RunConfig, SweepConfig, ValidateConfig


class Where(os.PathLike[str]):
    """An os.PathLike that is not a pathlib.Path."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __fspath__(self) -> str:
        return self.path


def test_every_config_path_takes_str_and_pathlike(tmp_path: Path) -> None:
    run = RunConfig(source=Where("m.py:build"), calibration=Where("c.npz"), data="d.npz", out_dir="out")  # type: ignore[arg-type]
    assert run.out_dir == Path("out") and isinstance(run.out_dir, Path)
    assert (run.source, run.calibration, run.data) == ("m.py:build", "c.npz", "d.npz")
    assert RunConfig(out_dir=Where(str(tmp_path))).out_dir == tmp_path  # type: ignore[arg-type]
    assert SweepConfig(out_dir="sw").out_dir == Path("sw")  # type: ignore[arg-type]
    val = ValidateConfig(
        candidate=Where("out"),  # type: ignore[arg-type]
        reference=Where("ref.onnx"),  # type: ignore[arg-type]
        json_out="v.json",  # type: ignore[arg-type]
        junit_out=Where("j.xml"),  # type: ignore[arg-type]
        html_out="v.html",  # type: ignore[arg-type]
        settings_dir=str(tmp_path),  # type: ignore[arg-type]
    )
    assert val.candidate == Path("out") and val.reference == "ref.onnx"
    assert (val.json_out, val.junit_out, val.html_out) == (Path("v.json"), Path("j.xml"), Path("v.html"))
    assert val.settings_dir == tmp_path
    bench = BenchmarkConfig(model="a.onnx", vs=Where("b.onnx"))  # type: ignore[arg-type]
    assert (bench.model, bench.vs) == (Path("a.onnx"), Path("b.onnx"))


def test_dir_shows_the_public_api_only() -> None:
    names = dir(qconvert)
    assert names == sorted(qconvert.__all__)
    for name in ("export", "validate", "load_session", "benchmark_models", "RunConfig"):
        assert name in names
    for name in ("Any", "TYPE_CHECKING", "annotations", "config", "errors"):
        assert name not in names


def test_export_from_python_with_str_paths_is_quiet(tmp_path: Path) -> None:
    """The issue's own call, with out_dir a str; the exporter's registry notes stay out of stderr."""
    code = (
        "import qconvert\n"
        "r = qconvert.export(qconvert.RunConfig(target='tensorrt', bits=8, out_dir='api-trt', force=True))\n"
        "print('passed', r.passed)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "passed True" in proc.stdout
    assert (tmp_path / "api-trt" / "model.onnx").is_file()
    assert "torchvision is not installed" not in proc.stderr
    assert "_registration.py" not in proc.stderr, proc.stderr
