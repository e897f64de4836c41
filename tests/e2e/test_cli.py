"""The command line: bad input is refused with exit code 2, a message that names the file or flag
and the fix, no traceback, and nothing left behind; the light commands stay light."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import QUICKSTART_OUT, RAISING, TINY_CNN, cli, import_model_file, leftovers, write_model


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args)


def assert_refused(code: int, text: str, *needles: str) -> None:
    assert code == 2, text
    for needle in needles:
        assert needle in text, f"{needle!r} not in output:\n{text}"


def assert_nothing_left(out_dir: Path) -> None:
    """No OUT_DIR, not even the parent folder the run had to create, no temporary folders beside
    them, and no default output root in the working directory (see the `out_dir` fixture)."""
    assert not out_dir.exists()
    assert not out_dir.parent.exists()
    cwd = out_dir.parent.parent
    assert leftovers(cwd) == []
    assert not (cwd / "qconvert-out").exists()


@pytest.fixture
def out_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """-o for a run: tmp_path/results/run1, whose parent does not exist yet; cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)
    return tmp_path / "results" / "run1"


# --- bad sources ---------------------------------------------------------------------------


def test_missing_factory_file(out_dir: Path) -> None:
    code, text = qconvert("export", "nowhere/model.py:build", "-o", str(out_dir))
    assert_refused(code, text, "error (source)", "nowhere/model.py", "Check the path before the ':'")
    assert_nothing_left(out_dir)


def test_missing_onnx_file(out_dir: Path) -> None:
    code, text = qconvert("export", "missing.onnx", "-o", str(out_dir))
    assert_refused(code, text, "SOURCE missing.onnx: no such file", "Give a .onnx file")
    assert_nothing_left(out_dir)


def _random_bytes(path: Path, tmp_path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4096))


def _truncated_export(path: Path, tmp_path: Path) -> None:
    module = import_model_file(write_model(tmp_path / "src", TINY_CNN))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.build(),
            module.example_inputs(),
            str(path),
            dynamo=False,
            input_names=["image"],
            dynamic_axes={"image": {0: "n"}},
        )
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("corrupt", [_random_bytes, _truncated_export], ids=["random-bytes", "truncated"])
def test_corrupt_onnx_file(corrupt: Callable[[Path, Path], None], out_dir: Path, tmp_path: Path) -> None:
    model = tmp_path / "broken.onnx"
    corrupt(model, tmp_path)
    before = model.read_bytes()

    code, text = qconvert("export", str(model), "-o", str(out_dir))

    assert_refused(code, text, "error (source)", str(model), "not a valid ONNX model", "Re-export it")
    assert model.read_bytes() == before  # an input file is never touched
    assert_nothing_left(out_dir)


def test_forward_that_raises(raising_file: Path, out_dir: Path) -> None:
    code, text = qconvert("export", f"{raising_file}:build", "-o", str(out_dir))
    assert_refused(
        code,
        text,
        "error (source)",
        f"{raising_file}:build",
        "forward raised ValueError: boom",
        "Fix the model",
    )
    assert_nothing_left(out_dir)


def test_error_text_with_brackets_is_shown_verbatim(tmp_path: Path, out_dir: Path) -> None:
    """Messages quote user text (paths, exception messages); none of it is console markup."""
    message = "expected [batch, channels] but got [/x]"
    model = write_model(tmp_path / "brackets", RAISING.format(message=message))

    code, text = qconvert("export", f"{model}:build", "-o", str(out_dir))

    assert_refused(code, text, f"forward raised ValueError: {message}")
    assert_nothing_left(out_dir)


def test_model_that_cannot_be_exported_leaves_nothing(
    unexportable_file: Path, make_npz: Callable[..., Path], out_dir: Path
) -> None:
    """The failure happens inside the export stage, after the temporary folder was made."""
    calib = make_npz("calib.npz", x=(20, 4))

    code, text = qconvert(
        "export", f"{unexportable_file}:build", "--calibration", str(calib), "-o", str(out_dir)
    )

    assert_refused(code, text, "error (export)", "failed with both exporters", "zeta")
    assert_nothing_left(out_dir)


# --- bad data ------------------------------------------------------------------------------


def test_calibration_with_wrong_shape(cnn_file: Path, make_npz: Callable[..., Path], out_dir: Path) -> None:
    calib = make_npz("calib.npz", image=(20, 3, 6, 6))

    code, text = qconvert("export", f"{cnn_file}:build", "--calibration", str(calib), "-o", str(out_dir))

    assert_refused(
        code,
        text,
        "error (calibration)",
        f"--calibration {calib}",
        "input 'image' expects samples of shape [3, 8, 8]",
        "the data has [20, 3, 6, 6]",
        "Reshape the data",
    )
    assert_nothing_left(out_dir)


def test_calibration_without_the_models_input(
    two_input_file: Path, make_npz: Callable[..., Path], out_dir: Path
) -> None:
    calib = make_npz("calib.npz", image=(20, 1, 6, 6))

    code, text = qconvert(
        "export", f"{two_input_file}:build", "--calibration", str(calib), "-o", str(out_dir)
    )

    assert_refused(code, text, "no array for model input(s) ['extra']", "Key each array by its input name")
    assert_nothing_left(out_dir)


def test_user_model_without_any_data(cnn_file: Path, out_dir: Path) -> None:
    code, text = qconvert("export", f"{cnn_file}:build", "-o", str(out_dir))
    assert_refused(
        code,
        text,
        "error (calibration)",
        "validation needs inputs: pass --data DATA",
        "or --calibration DATA",
    )
    assert_nothing_left(out_dir)


def test_static_int8_with_only_held_out_data(
    cnn_file: Path, make_npz: Callable[..., Path], out_dir: Path
) -> None:
    data = make_npz("heldout.npz", image=(20, 3, 8, 8))

    code, text = qconvert("export", f"{cnn_file}:build", "--data", str(data), "-o", str(out_dir))

    assert_refused(code, text, "static int8 needs calibration data: pass --calibration DATA")
    assert_nothing_left(out_dir)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", ["--calibration", "--data"])
def test_data_with_non_finite_values(
    bad_value: float, flag: str, cnn_file: Path, make_npz: Callable[..., Path], out_dir: Path, tmp_path: Path
) -> None:
    good = make_npz("good.npz", image=(20, 3, 8, 8))
    bad = tmp_path / "bad.npz"
    arrays = dict(np.load(good))
    arrays["image"][7, 1, 2, 3] = bad_value
    np.savez(bad, **arrays)
    files = {"--calibration": good, "--data": good, flag: bad}

    code, text = qconvert(
        "export",
        f"{cnn_file}:build",
        "--calibration",
        str(files["--calibration"]),
        "--data",
        str(files["--data"]),
        "-o",
        str(out_dir),
    )

    assert_refused(
        code, text, f"{flag} {bad}", "contains 1 NaN/Inf value(s), first in sample 7", "Clean the data"
    )
    assert_nothing_left(out_dir)


# --- bad flags -----------------------------------------------------------------------------


def test_unknown_target_lists_the_valid_ones(out_dir: Path) -> None:
    code, text = qconvert("export", "--target", "foo", "-o", str(out_dir))
    assert_refused(code, text, "--target", "'foo' is not one of", "'cpu'", "'tensorrt'")
    assert_nothing_left(out_dir)


def test_bits_the_target_does_not_support(out_dir: Path) -> None:
    code, text = qconvert("export", "--bits", "4", "--target", "tensorrt", "-o", str(out_dir))
    assert_refused(
        code,
        text,
        "error (config)",
        "--bits 4 is not supported by --target tensorrt",
        "Valid --bits for tensorrt: 16, 8",
    )
    assert_nothing_left(out_dir)


def test_bits_that_do_not_exist(out_dir: Path) -> None:
    code, text = qconvert("export", "--bits", "3", "-o", str(out_dir))
    assert_refused(code, text, "--bits", "'3' is not one of", "'16', '8', '4'")
    assert_nothing_left(out_dir)


def test_dynamic_mode_on_tensorrt_is_refused_with_the_reason(out_dir: Path) -> None:
    code, text = qconvert("export", "--mode", "dynamic", "--target", "tensorrt", "-o", str(out_dir))
    assert_refused(
        code,
        text,
        "--mode dynamic is not supported by --target tensorrt",
        "DynamicQuantizeLinear/MatMulInteger, which TensorRT cannot run",
        "Valid modes: static",
    )
    assert_nothing_left(out_dir)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("cosine=>0.99", "--tolerance item 'cosine=>0.99' is not [OUTPUT:]METRIC>=VALUE or <=VALUE"),
        ("banana>=0.5", "--tolerance: unknown metric 'banana'. Valid metrics: cosine, sqnr_db"),
        ("cosine<=0.99", "--tolerance: cosine is bounded with >="),
        ("max_abs<=1.2.3", "--tolerance: '1.2.3' in 'max_abs<=1.2.3' is not a number"),
    ],
)
def test_malformed_tolerance(spec: str, needle: str, out_dir: Path) -> None:
    code, text = qconvert("export", "--tolerance", spec, "-o", str(out_dir))
    assert_refused(code, text, "error (config)", needle)
    assert_nothing_left(out_dir)


def test_malformed_input_spec(mlp_file: Path, out_dir: Path) -> None:
    code, text = qconvert("export", f"{mlp_file}:build", "--input", "features:12xa", "-o", str(out_dir))
    assert_refused(code, text, "--input 'features:12xa'", "must be positive integers joined by 'x'")
    assert_nothing_left(out_dir)


def test_factory_without_example_inputs_asks_for_input(mlp_file: Path, out_dir: Path) -> None:
    code, text = qconvert("export", f"{mlp_file}:build", "-o", str(out_dir))
    assert_refused(code, text, "no example inputs", "--input NAME:SHAPE[:DTYPE]")
    assert_nothing_left(out_dir)


# --- the output folder ---------------------------------------------------------------------


@pytest.fixture
def existing_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """An output folder that already exists, with a file of the user's in it."""
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    sentinel = out / "keep-me.txt"
    sentinel.write_text("the user's work")
    return out, sentinel


def test_existing_output_folder_is_refused_without_force(
    existing_out: tuple[Path, Path], tmp_path: Path
) -> None:
    out, sentinel = existing_out
    before = sorted(p.name for p in out.iterdir())

    code, text = qconvert("export", "-o", str(out))

    assert_refused(code, text, f"-o {out}", "already exists", "Pass --force to replace it", "left untouched")
    assert sorted(p.name for p in out.iterdir()) == before
    assert sentinel.read_text() == "the user's work"
    assert leftovers(tmp_path) == []


def test_output_path_that_is_a_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    target = tmp_path / "results.txt"
    target.write_text("not a folder")

    code, text = qconvert("export", "-o", str(target), "--force")

    assert_refused(code, text, "exists and is a file, not a folder")
    assert target.read_text() == "not a folder"


@pytest.mark.slow
def test_force_replaces_the_output_folder(existing_out: tuple[Path, Path], tmp_path: Path) -> None:
    out, sentinel = existing_out
    (out / "qconvert.json").write_text("{}")  # --force replaces only a folder qconvert wrote (issue 13)

    code, text = qconvert("export", "--target", "cpu", "-o", str(out), "--force")

    assert code == 0, text
    assert not sentinel.exists()
    assert {p.name for p in out.iterdir()} == {
        "model.onnx",
        "reference.onnx",
        "qconvert.json",
        "report.json",
        "report.html",
    }
    manifest = json.loads((out / "qconvert.json").read_text())
    assert manifest["settings"]["force"] is True
    assert leftovers(tmp_path) == []


# --- the light commands --------------------------------------------------------------------


def _modules_after(code: str, *args: str) -> set[str]:
    """Run `code` in a fresh interpreter; return the top-level modules it imported."""
    probe = (
        "import sys\n"
        f"sys.argv = ['qconvert', *{list(args)!r}]\n"
        f"{code}\n"
        "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES"))
    return set(line.split()[1:])


RUN_CLI = (
    "from qconvert.cli import main\n"
    "try:\n"
    "    main()\n"
    "except SystemExit as e:\n"
    "    assert e.code in (0, None), e.code\n"
)


def test_import_qconvert_does_not_import_torch() -> None:
    modules = _modules_after("import qconvert\nassert qconvert.RunConfig and qconvert.__version__")
    assert "qconvert" in modules
    assert "torch" not in modules


def test_help_does_not_import_torch() -> None:
    modules = _modules_after(RUN_CLI, "--help")
    assert "typer" in modules
    assert "torch" not in modules


def test_export_help_does_not_import_torch() -> None:
    modules = _modules_after(RUN_CLI, "export", "--help")
    assert "torch" not in modules
    # the --recover help lists every step by name, registered lazily: none of their modules (nor
    # onnx, ~0.4-1 s) is imported to draw the help
    assert "onnx" not in modules and "qconvert.recover.base" not in modules


def test_inspect_does_not_import_torch(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, cwd = quickstart
    modules = _modules_after(RUN_CLI, "inspect", str(cwd / QUICKSTART_OUT / "model.onnx"))
    assert "onnx" in modules
    assert "torch" not in modules


def test_help_and_version() -> None:
    code, text = qconvert("--help")
    assert code == 0
    for command in ("export", "targets", "inspect"):
        assert command in text
    code, text = qconvert("--version")
    assert (code, text) == (0, "qconvert 0.1.0")


def test_targets_lists_every_registered_target() -> None:
    import onnxruntime as ort

    from qconvert.targets import TARGETS

    code, text = qconvert("targets")

    assert code == 0, text
    installed = set(ort.get_available_providers())
    for name, target in TARGETS:
        assert name in text
        for bits, modes in target.modes.items():
            assert f"{bits}: {', '.join(modes)}" in text
        for provider in target.bind().providers([]):
            label = provider.name.removesuffix("ExecutionProvider")
            assert f"{label} ({'installed' if provider.name in installed else 'not here'})" in text
        for option in target.options:
            assert f"{option.name}={option.default}" in text


def test_inspect_the_quantized_model(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, cwd = quickstart
    model = cwd / QUICKSTART_OUT / "model.onnx"

    code, text = qconvert("inspect", str(model))

    assert code == 0, text
    proto = onnx.load(str(model))
    opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    assert f"ai.onnx {opset}" in text
    # shapes are shown with the symbolic batch axis (and not swallowed as console markup)
    assert "input input: float32 [batch, 1, 8, 8]" in text
    assert "output logits: float32 [batch, 10]" in text
    counts: dict[str, int] = {}
    for node in proto.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= set(counts)
    for op, n in counts.items():
        assert f"{op} {n}" in text


def test_inspect_refuses_missing_and_corrupt_files(tmp_path: Path) -> None:
    code, text = qconvert("inspect", str(tmp_path / "none.onnx"))
    assert_refused(code, text, "MODEL", "none.onnx: no such file")

    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\xff" * 300)
    code, text = qconvert("inspect", str(junk))
    assert_refused(code, text, f"MODEL {junk}: not a valid ONNX file")
