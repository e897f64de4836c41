"""Every SOURCE form loads, exports to a checker-valid ONNX model with a dynamic batch axis, and
computes what the PyTorch model computes. Pickles that would run code are refused without
running it."""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import TINY_CNN, import_model_file, write_model

from qconvert import pipeline
from qconvert.errors import SourceError
from qconvert.onnx_export import ExportResult, onnx_from_torch
from qconvert.settings import RunConfig
from qconvert.sources import LoadedModel, load_source
from qconvert.types import InputSpec

OPSET = 18

# TorchScript is deprecated in torch, but users still hand us TorchScript files; the pickle
# protocol note comes from torch's weights-only unpickler refusing our crafted pickle.
pytestmark = pytest.mark.filterwarnings(
    "ignore:`torch.jit.*` is deprecated:DeprecationWarning",
    "ignore:Detected pickle protocol:UserWarning",
)


# --- helpers -------------------------------------------------------------------------------


def random_feeds(loaded: LoadedModel, batch: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs of `batch` samples, per-sample shape and dtype taken from the example inputs."""
    rng = np.random.default_rng(seed)
    return {
        name: rng.standard_normal((batch, *example.shape[1:])).astype(example.dtype)
        for name, example in zip(loaded.input_names, loaded.example_inputs, strict=True)
    }


def run_onnx(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def export(loaded: LoadedModel, tmp_path: Path) -> ExportResult:
    workdir = tmp_path / "work"
    workdir.mkdir(exist_ok=True)
    return onnx_from_torch(loaded, OPSET, workdir)


def assert_exports_faithfully(loaded: LoadedModel, result: ExportResult) -> onnx.ModelProto:
    """The ONNX file passes the checker, names its inputs/outputs as the LoadedModel says, has a
    symbolic batch axis, and matches the source model at batch 1 and batch 3."""
    onnx.checker.check_model(str(result.path), full_check=True)
    model = onnx.load(str(result.path))
    assert [i.name for i in model.graph.input] == list(loaded.input_names)
    assert [o.name for o in model.graph.output] == list(loaded.output_names)
    for graph_input in model.graph.input:
        batch_dim = graph_input.type.tensor_type.shape.dim[0]
        assert batch_dim.dim_param, f"input {graph_input.name} has a fixed batch axis: {batch_dim}"
    for batch in (1, 3):
        feeds = random_feeds(loaded, batch, seed=batch)
        got = run_onnx(result.path, feeds)
        want = loaded.run_torch(feeds) if loaded.is_torch else None
        assert all(g.shape[0] == batch for g in got)
        if want is not None:
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    return model


def tiny_cnn(folder: Path) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The tiny CNN from its model file, imported as a real module (so it pickles), in eval mode,
    with its example inputs."""
    module = import_model_file(write_model(folder, TINY_CNN, "tiny_cnn_src.py"))
    return module.build().eval(), module.example_inputs()


# --- factories -----------------------------------------------------------------------------


def test_file_factory_with_example_inputs(cnn_file: Path, tmp_path: Path) -> None:
    loaded = load_source(f"{cnn_file}:build")

    assert loaded.kind == "factory"
    assert loaded.name == "model"
    assert loaded.input_names == ("image",)  # from forward's signature
    assert loaded.output_names == ("output",)
    assert loaded.input_dims == ((None, 3, 8, 8),)
    assert [a.shape for a in loaded.example_inputs] == [(1, 3, 8, 8)]
    assert loaded.files == (cnn_file,)

    result = export(loaded, tmp_path)
    assert (result.exporter, result.fallback_reason, result.opset) == ("dynamo", None, OPSET)
    assert_exports_faithfully(loaded, result)


def test_file_factory_without_example_inputs_asks_for_input(mlp_file: Path) -> None:
    with pytest.raises(SourceError, match=r"--input NAME:SHAPE") as excinfo:
        load_source(f"{mlp_file}:build")
    assert "example_inputs()" in str(excinfo.value)


def test_file_factory_with_input_spec(mlp_file: Path, tmp_path: Path) -> None:
    loaded = load_source(f"{mlp_file}:build", (InputSpec.parse("features:1x12"),))

    assert loaded.input_names == ("features",)
    assert loaded.input_dims == ((None, 12),)
    assert loaded.example_inputs[0].dtype == np.float32

    result = export(loaded, tmp_path)
    assert result.exporter == "dynamo"
    assert_exports_faithfully(loaded, result)


def test_two_input_factory(two_input_file: Path, tmp_path: Path) -> None:
    loaded = load_source(f"{two_input_file}:build")

    assert loaded.input_names == ("image", "extra")
    assert loaded.input_dims == ((None, 1, 6, 6), (None, 5))

    result = export(loaded, tmp_path)
    assert result.exporter == "dynamo"
    assert_exports_faithfully(loaded, result)


def test_factory_name_that_is_missing_lists_the_callables(cnn_file: Path) -> None:
    with pytest.raises(SourceError, match=r"has no callable 'make'") as excinfo:
        load_source(f"{cnn_file}:make")
    assert "build" in str(excinfo.value)
    assert "example_inputs" in str(excinfo.value)


@pytest.fixture
def tiny_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An importable package `qc_tinypkg.nets` with the tiny CNN factory; removed afterwards."""
    root = tmp_path / "site"
    write_model(root / "qc_tinypkg", "", "__init__.py")
    write_model(root / "qc_tinypkg", TINY_CNN, "nets.py")
    monkeypatch.syspath_prepend(str(root))
    yield "qc_tinypkg.nets"
    for name in ("qc_tinypkg.nets", "qc_tinypkg"):
        sys.modules.pop(name, None)


def test_package_module_factory(tiny_package: str, tmp_path: Path) -> None:
    loaded = load_source(f"{tiny_package}:build")

    assert loaded.kind == "factory"
    assert loaded.name == "nets"
    assert loaded.input_names == ("image",)
    assert loaded.files and loaded.files[0].name == "nets.py"

    result = export(loaded, tmp_path)
    assert result.exporter == "dynamo"
    assert_exports_faithfully(loaded, result)


def test_package_module_that_does_not_exist() -> None:
    with pytest.raises(SourceError, match=r"cannot import module 'qc_no_such_pkg.nets'"):
        load_source("qc_no_such_pkg.nets:build")


# --- files ---------------------------------------------------------------------------------


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    """The tiny CNN exported by torch itself (not by qconvert) with a dynamic batch axis."""
    model, args = tiny_cnn(tmp_path / "src")
    path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            args,
            str(path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["pixels"],
            output_names=["scores"],
            dynamic_axes={"pixels": {0: "n"}, "scores": {0: "n"}},
        )
    return path


def test_onnx_file(onnx_file: Path, tmp_path: Path) -> None:
    loaded = load_source(str(onnx_file))

    assert loaded.kind == "onnx"
    assert loaded.name == "tiny"
    assert not loaded.is_torch
    assert loaded.input_names == ("pixels",)
    assert loaded.output_names == ("scores",)
    assert loaded.input_dims == ((None, 3, 8, 8),)

    result = export(loaded, tmp_path)
    assert result.exporter == "none (ONNX source)"
    assert result.fallback_reason is None
    assert result.path.read_bytes() == onnx_file.read_bytes()
    assert_exports_faithfully(loaded, result)
    # the ONNX copy computes what the original torch model computes
    model, _ = tiny_cnn(tmp_path / "again")
    feeds = random_feeds(loaded, 3)
    with torch.no_grad():
        want = model(torch.from_numpy(feeds["pixels"])).numpy()
    np.testing.assert_allclose(run_onnx(result.path, feeds)[0], want, rtol=1e-4, atol=1e-5)


def test_onnx_file_with_unknown_input_name(onnx_file: Path) -> None:
    with pytest.raises(SourceError, match=r"are not inputs of .*Its inputs: pixels"):
        load_source(str(onnx_file), (InputSpec.parse("image:1x3x8x8"),))


@pytest.fixture
def torchscript_file(tmp_path: Path) -> Path:
    model, args = tiny_cnn(tmp_path / "src")
    path = tmp_path / "tiny_traced.pt"
    torch.jit.trace(model, args).save(str(path))
    return path


def test_torchscript_file_needs_input(torchscript_file: Path) -> None:
    with pytest.raises(SourceError, match=r"does not record its input shapes\. Pass --input"):
        load_source(str(torchscript_file))


def test_torchscript_file_falls_back_to_torchscript_exporter(torchscript_file: Path, tmp_path: Path) -> None:
    loaded = load_source(str(torchscript_file), (InputSpec.parse("x:1x3x8x8"),))

    assert loaded.kind == "torchscript"
    assert loaded.input_names == ("x",)
    assert loaded.input_dims == ((None, 3, 8, 8),)

    result = export(loaded, tmp_path)
    # torch.export cannot trace a ScriptModule, so qconvert takes the TorchScript exporter and
    # says why; the result must still be a faithful, batch-dynamic model.
    assert result.exporter == "torchscript"
    assert result.fallback_reason and "Error" in result.fallback_reason
    assert_exports_faithfully(loaded, result)


def test_torchscript_fallback_is_recorded_in_the_manifest(
    torchscript_file: Path, make_npz: Callable[..., Path], tmp_path: Path
) -> None:
    config = RunConfig(
        source=str(torchscript_file),
        inputs=(InputSpec.parse("x:1x3x8x8"),),
        calibration=str(make_npz("calib.npz", x=(30, 3, 8, 8))),
        out_dir=tmp_path / "out",
        latency_repeats=3,
    )

    result = pipeline.export(config)

    on_disk = json.loads((tmp_path / "out" / "qconvert.json").read_text())
    assert on_disk["export"] == result.manifest["export"]
    assert on_disk["export"]["exporter"] == "torchscript"
    assert on_disk["export"]["fallback_reason"]
    assert on_disk["source"]["kind"] == "torchscript"
    assert on_disk["source"]["files"] == [
        {"path": str(torchscript_file), "sha256": hashlib.sha256(torchscript_file.read_bytes()).hexdigest()}
    ]


def test_exported_program_file(tmp_path: Path) -> None:
    model, _ = tiny_cnn(tmp_path / "src")
    program = torch.export.export(
        model, (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))

    loaded = load_source(str(path))

    assert loaded.kind == "exported-program"
    assert loaded.name == "tiny"
    assert loaded.input_names == ("image",)  # the program's user input
    assert loaded.input_dims == ((None, 3, 8, 8),)
    assert [a.shape for a in loaded.example_inputs] == [(2, 3, 8, 8)]  # stored in the archive

    result = export(loaded, tmp_path)
    assert result.exporter == "dynamo"
    assert_exports_faithfully(loaded, result)


def test_exported_program_with_fixed_batch_is_refused_with_the_fix(tmp_path: Path) -> None:
    model, args = tiny_cnn(tmp_path / "src")
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, args), str(path))

    with pytest.raises(SourceError, match=r"fixed batch size") as excinfo:
        load_source(str(path))
    assert "Dim('batch')" in str(excinfo.value)


def test_builtin_default_model(tmp_path: Path) -> None:
    loaded = load_source(None)

    assert loaded.kind == "builtin"
    assert loaded.name == "digits_cnn"
    assert loaded.input_names == ("input",)
    assert loaded.output_names == ("logits",)
    assert loaded.input_dims == ((None, 1, 8, 8),)
    assert {p.name for p in loaded.files} == {"digits_cnn.py", "digits_cnn.pt"}
    assert loaded.default_calibration is not None and loaded.default_calibration.is_file()
    assert loaded.default_data is not None and loaded.default_data.is_file()

    result = export(loaded, tmp_path)
    assert result.exporter == "dynamo"
    assert_exports_faithfully(loaded, result)


def test_missing_file_names_the_forms() -> None:
    with pytest.raises(SourceError, match=r"no such file") as excinfo:
        load_source("does/not/exist.onnx")
    assert "path/file.py:factory" in str(excinfo.value)


# --- pickles -------------------------------------------------------------------------------


def test_pickled_whole_module_is_refused(tmp_path: Path) -> None:
    model, _ = tiny_cnn(tmp_path / "src")
    path = tmp_path / "whole.pt"
    torch.save(model, path)

    with pytest.raises(
        SourceError, match=r"refused\. This file is a pickle that needs to run code"
    ) as excinfo:
        load_source(str(path))
    assert "torch.export.save" in str(excinfo.value)


def test_state_dict_holds_only_weights(tmp_path: Path) -> None:
    model, _ = tiny_cnn(tmp_path / "src")
    path = tmp_path / "weights.pt"
    torch.save(model.state_dict(), path)

    with pytest.raises(SourceError, match=r"holds only weights \(OrderedDict\), not a model"):
        load_source(str(path))


class _TouchOnLoad:
    """Unpickling this creates the file `marker`: proof that loading ran code from the pickle."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def _torch_pickle(path: Path, marker: Path) -> None:
    torch.save({"weights": _TouchOnLoad(marker)}, path)


def _plain_pickle(path: Path, marker: Path) -> None:
    path.write_bytes(pickle.dumps(_TouchOnLoad(marker)))


def _fake_torchscript(path: Path, marker: Path) -> None:
    """A zip laid out like a TorchScript archive whose pickles would run code."""
    payload = pickle.dumps(_TouchOnLoad(marker), protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("m/data.pkl", payload)
        z.writestr("m/constants.pkl", payload)
        z.writestr("m/code/__torch__.py", "")
        z.writestr("m/version", "3\n")


@pytest.mark.parametrize(
    ("file_name", "write"),
    [
        ("evil.pt", _torch_pickle),
        ("evil.pkl", _plain_pickle),
        ("evil.pt2", _torch_pickle),  # claims to be a torch.export archive
        ("evil_ts.pt", _fake_torchscript),  # claims to be a TorchScript archive
    ],
)
def test_code_running_pickle_is_refused_without_running_it(tmp_path: Path, file_name: str, write) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / file_name
    write(path, marker)
    assert not marker.exists()

    with pytest.raises(SourceError, match=rf"SOURCE {path}"):
        load_source(str(path))
    assert not marker.exists(), "loading the source ran code from the pickle"

    # the payload is live: an unrestricted unpickle would have created the marker
    if file_name == "evil.pkl":
        pickle.loads(path.read_bytes())
        assert marker.exists()
