"""`qconvert sweep`: one real export per (bits, mode) on a tiny CNN, side by side with fp32.

The sweeps here run real exports and onnxruntime sessions. The serial sweep (on an ONNX
source) is shared by several tests; the parallel one runs the same settings in two spawned workers
and must give the same figures; the Ray one runs on a local cluster this module starts and stops
itself. The sweeps that must fail run a PyTorch source, in this process.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _models import IMAGE_SHAPE, NUM_CLASSES, write_cnn_mlp
from conftest import TINY_CNN, cli, leftovers, save_npz, write_model

from qconvert.errors import ConfigError
from qconvert.results import SCHEMA_VERSION, Collapse, CollapseFamily, SweepReport
from qconvert.settings import DataOptions, RunConfig, SweepConfig, from_flags
from qconvert.sweep import (
    NOT_SUPPORTED,
    OUT_OF_TOLERANCE,
    PASSED,
    SweepRow,
    _absolute_paths,
    _base_run_config,
    bits_from_text,
    plan_trials,
    recommend,
)
from qconvert.sweep_report import collapse_text
from qconvert.targets import Target
from qconvert.targets.tensorrt import TensorRTTarget


def qconvert(*args: str) -> tuple[int, str]:
    return cli(*args, columns=240)


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The tiny CNN ([N, 3, 8, 8] -> 4 classes), calibration data and labelled held-out data (160
    samples: enough for a PASSED verdict at 95% under the sweep's tolerance)."""
    root = tmp_path_factory.mktemp("sweep-inputs")
    return {
        "model": write_model(root, TINY_CNN),
        "calib": save_npz(root / "calib.npz", seed=0, image=(32, 3, 8, 8)),
        "heldout": save_npz(root / "heldout.npz", seed=1, labels=4, image=(160, 3, 8, 8)),
        # an fp32 ONNX source ([N, 1, 8, 8] -> 5 classes): trials on it never import torch, so
        # the parallel and Ray sweeps pay for their processes, not for torch in each of them
        "onnx": write_cnn_mlp(root / "cnn_mlp.onnx"),
        "onnx_calib": save_npz(root / "pixels_calib.npz", seed=2, pixels=(32, *IMAGE_SHAPE)),
        "onnx_heldout": save_npz(
            root / "pixels_heldout.npz", seed=3, labels=NUM_CLASSES, pixels=(160, *IMAGE_SHAPE)
        ),
    }


def sweep_args(files: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return [
        "sweep",
        str(files["onnx"]),
        "--target",
        "cpu",
        "--target-option",
        "format=qdq",  # no timing-dependent format choice: parallel and serial build the same graph
        "--calibration",
        str(files["onnx_calib"]),
        "--data",
        str(files["onnx_heldout"]),
        # random weights on random inputs leave near-ties between classes: int8 flips a few
        "--tolerance",
        "top1_agreement>=0.9,accuracy_drop<=0.05",
        "-o",
        str(out),
        *extra,
    ]


SETTINGS = ("--bits", "8", "--modes", "static,dynamic,fp16")


def rows_of(out: Path) -> dict[str, dict[str, Any]]:
    summary = json.loads((out / "sweep.json").read_text())
    return {r["name"]: r for r in summary["rows"]}


@pytest.fixture(scope="module")
def serial(files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[int, str, Path]:
    """8 bits, static and dynamic (and fp16, which is no 8-bit mode), on the cpu target, one trial
    after another in this process."""
    out = tmp_path_factory.mktemp("serial") / "sweep"
    code, text = qconvert(*sweep_args(files, out, *SETTINGS, "--workers", "1"))
    return code, text, out


# --- recommendation logic, on synthetic rows ------------------------------------------------------


def row(name: str, status: str = PASSED, size: float = 0.3, latency: float = 0.9) -> SweepRow:
    return SweepRow(name, 8, "static", status, size_ratio=size, latency_ratio=latency)


def test_recommend_smallest_and_fastest_that_hold() -> None:
    rows = [
        SweepRow("fp32", None, None, "baseline", size_ratio=1.0, latency_ratio=1.0),
        row("a", size=0.30, latency=0.80),
        row("b", size=0.20, latency=0.95),
        row("tiny-but-wrong", OUT_OF_TOLERANCE, size=0.10, latency=0.50),
        row("fast-but-wrong", OUT_OF_TOLERANCE, size=0.50, latency=0.10),
    ]
    rec = recommend(rows)
    assert (rec.smallest and rec.smallest.name, rec.fastest and rec.fastest.name) == ("b", "a")
    assert rec.describe() == (
        "smallest that holds tolerance: b (0.20x size); fastest that holds tolerance: a (0.80x fp32 latency)"
    )


def test_recommend_says_when_none_is_faster_or_none_holds() -> None:
    slower = recommend([row("a", size=0.3, latency=1.3), row("b", size=0.5, latency=1.0)])
    assert slower.smallest is not None and slower.smallest.name == "a"
    assert slower.fastest is None
    assert slower.describe().endswith("fastest that holds tolerance: none is faster than fp32 here")
    nothing = recommend([row("a", OUT_OF_TOLERANCE), row("b", NOT_SUPPORTED, size=0.1)])
    assert nothing.smallest is None and nothing.fastest is None
    assert nothing.describe().startswith("no quantized setting holds the tolerance")


def test_recommend_breaks_ties_by_the_other_figure() -> None:
    rec = recommend(
        [row("x", size=0.3, latency=0.9), row("y", size=0.3, latency=0.7), row("z", size=0.4, latency=0.7)]
    )
    assert rec.smallest is not None and rec.smallest.name == "y"  # same size: the faster one
    assert rec.fastest is not None and rec.fastest.name == "y"  # same speed: the smaller one
    assert row("s", latency=1.0).slower_than_fp32 and not row("f", latency=0.99).slower_than_fp32


def _probed(rate: float, **families: tuple[int | None, int | None]) -> SweepRow:
    """A row whose collapse probe found `rate`, and per family (longest fp32 keeps, longest kept)."""
    kept = {
        name: CollapseFamily(
            pattern="", lengths=(), pairs=(), reference_rate=(), candidate_rate=(),
            reference_longest=reference, candidate_longest=None, kept_longest=longest, lost=(),
        )
        for name, (reference, longest) in families.items()
    }  # fmt: skip
    collapse = Collapse(
        rate=rate, worst_output="logits", sampled=100, samples=50, effective_pairs=50.0, pairs=90,
        collapsed=1, outputs={}, distance_fraction=0.1, families=kept, families_skipped=None,
        separates=0.5, keep_margin=0.1, notes=(),
    )  # fmt: skip
    return SweepRow("8bit-static", 8, "static", "passed", collapse=collapse)


def test_collapse_column_shows_the_lengths_kept_out_of_fp32s() -> None:
    assert collapse_text(_probed(0.009, copy=(32, 32), count=(16, 4), odd=(None, 8))) == (
        "0.9%; copy 32/32, count 4/16, odd 8/-"
    )
    # keeping up with fp32 past the longest length fp32 itself handles is shown as fp32's length
    assert collapse_text(_probed(0.0, count=(16, 31))) == "0.0%; count 16/16"
    assert collapse_text(SweepRow("8bit-static", 8, "static", "error", collapse_error="x")) == "error"


# --- planning: not-supported settings are rows in the target's own words ---------------------------


# Targets gain bit widths over time; these plans use target objects of the real classes with their
# capabilities pinned, so the rows they give do not depend on what the registry holds today.
TENSORRT_8 = TensorRTTarget(name="tensorrt", description="int8 only", modes={8: ("static",)})
GPU_16_8 = Target(name="gpu", description="fp16 and int8", modes={16: ("fp16",), 8: ("static", "dynamic")})


def test_plan_marks_what_the_target_does_not_support() -> None:
    config = SweepConfig(bits=(16, 8, 4), target="tensorrt", modes=("static", "dynamic"))
    trials = plan_trials(config, TENSORRT_8, _base_run_config(config))
    by_name = {t.name: t for t in trials}
    assert list(by_name) == ["16bit", "8bit-static", "8bit-dynamic", "4bit"]
    assert by_name["8bit-static"].run is not None and by_name["8bit-static"].run.mode == "static"
    assert "--bits 16 is not supported by --target tensorrt" in (by_name["16bit"].unsupported or "")
    assert "--bits 4 is not supported by --target tensorrt" in (by_name["4bit"].unsupported or "")
    assert "DynamicQuantizeLinear" in (by_name["8bit-dynamic"].unsupported or "")  # tensorrt's why_not


def test_plan_without_modes_takes_each_bit_widths_default() -> None:
    config = SweepConfig(bits=(16, 8), target="cuda")
    trials = plan_trials(config, GPU_16_8, _base_run_config(config))
    assert [(t.name, t.run is not None) for t in trials] == [("16bit-fp16", True), ("8bit-static", True)]
    with_modes = SweepConfig(bits=(16, 8), target="cuda", modes=("static", "dynamic"))
    names = [
        (t.name, t.run is not None) for t in plan_trials(with_modes, GPU_16_8, _base_run_config(with_modes))
    ]
    assert names == [
        ("16bit-static", False),
        ("16bit-dynamic", False),
        ("8bit-static", True),
        ("8bit-dynamic", True),
    ]


# --- bad input: exit 2, a message naming the flag, nothing written ---------------------------------


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--bits", "3"], ["--bits 3 is not a bit width", "Valid: 16, 8, 4"]),
        (["--bits", ""], ["--bits: give at least one bit width"]),
        (["--bits", "8,eight"], ["'eight' is not a bit width"]),
        (["--bits", "8", "--modes", "static,fast"], ["--modes: 'fast' is not a mode", "Valid: static"]),
        (["--bits", "8", "--modes", ","], ["--modes: give at least one mode"]),
        (["--bits", "8", "--ray-address", "127.0.0.1:1"], ["--ray-address needs --executor ray"]),
        (["--bits", "8", "--executor", "ray", "--workers", "2"], ["--workers is for the local executor"]),
        (["--bits", "8", "--modes", "fp16"], ["supports none of the settings", "8bit-fp16: --mode fp16"]),
        (["--bits", "8", "--image-size", "3x"], ["--image-size '3x' is not HxW"]),
        (["--bits", "8", "--mean", "x"], ["--mean 'x' is not a comma-separated list"]),
        (["--bits", "8", "--layout", "hwc"], ["--layout 'hwc' is not a layout"]),
        (["--bits", "8", "--max-length", "0"], ["Invalid value for '--max-length'"]),
        (["--bits", "8", "--padding", "wide"], ["Invalid value for '--padding'"]),
    ],
)
def test_bad_input_is_refused(args: list[str], needles: list[str], tmp_path: Path) -> None:
    out = tmp_path / "out" / "sweep"
    code, text = qconvert("sweep", "--target", "cpu", "-o", str(out), *args)
    assert code == 2, text
    for needle in needles:
        assert needle in text, text
    assert not out.exists() and leftovers(out.parent) == []


def test_bits_list_parsing() -> None:
    assert bits_from_text("16, 8,4") == (16, 8, 4)
    with pytest.raises(ConfigError, match="listed twice"):
        SweepConfig(bits=(8, 8))


def test_a_sweep_where_no_trial_runs_leaves_nothing(files: dict[str, Path], tmp_path: Path) -> None:
    """Static int8 without calibration data fails in every trial: exit 2 with the trial's message,
    and neither the output folder nor its temporary sibling is left."""
    out = tmp_path / "results" / "sweep"
    code, text = qconvert(
        "sweep", f"{files['model']}:build", "--target", "cpu", "--bits", "8", "--modes", "static",
        "--data", str(files["heldout"]), "-o", str(out),
    )  # fmt: skip
    assert code == 2, text
    assert "error (calibration)" in text and "static int8 needs calibration data" in text
    assert not out.exists() and leftovers(out.parent) == []


# --- a real sweep --------------------------------------------------------------------------------


def _gray_images(folder: Path, count: int, seed: int) -> Path:
    """`count` 12x12 grayscale PNGs: larger than the ONNX source's 8x8 input, so they are resized."""
    from PIL import Image

    folder.mkdir(parents=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (count, 12, 12), dtype=np.uint8)
    for i, p in enumerate(pixels):
        Image.fromarray(p).save(folder / f"{i:02d}.png")
    return folder


def test_image_flags_reach_every_trial(files: dict[str, Path], tmp_path: Path) -> None:
    """--image-size/--mean/--std/--layout go into each trial's RunConfig: the trial's manifest
    settings and rebuild command carry them, and a size the model cannot take fails on its flag."""
    calib = _gray_images(tmp_path / "calib", 16, seed=0)
    held = _gray_images(tmp_path / "held", 16, seed=1)
    image_flags = ("--image-size", "8", "--mean", "0.5", "--std", "0.25", "--layout", "nchw")
    out = tmp_path / "sweep"
    code, text = qconvert(
        "sweep", str(files["onnx"]), "--target", "cpu", "--target-option", "format=qdq", "--bits", "8",
        "--modes", "static", "--workers", "1", "--calibration", str(calib), "--data", str(held),
        "--tolerance", "top1_agreement>=0.5", "-o", str(out), *image_flags,
    )  # fmt: skip
    # 16 held-out images cannot show any bound at 95% (the always-on nonfinite check takes 72): the
    # one trial, and so the sweep, is INCONCLUSIVE (exit 1), and says how many samples would settle it
    assert code == 1 and "INCONCLUSIVE |" in text, text
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["held_out_samples"] == 16 and summary["verdict"] == "inconclusive"
    (trial,) = [r for r in summary["rows"] if r["bits"]]
    assert trial["status"] == "inconclusive" and "72 held-out samples would settle it" in trial["reason"]
    assert "inconclusive: 8bit-static:" in text
    manifest = json.loads((out / "trials" / "8bit-static" / "qconvert.json").read_text())
    options = manifest["settings"]["data_options"]
    assert options["image_size"] == [8, 8] and options["mean"] == [0.5] and options["std"] == [0.25]
    assert options["layout"] == "nchw" and options["tokenizer"] is None
    assert "--image-size 8x8 --mean 0.5 --std 0.25" in manifest["command"]

    code, text = qconvert(
        "sweep", str(files["onnx"]), "--target", "cpu", "--bits", "8", "--modes", "dynamic", "--workers", "1",
        "--data", str(held), "--image-size", "6", "-o", str(tmp_path / "small"),
    )  # fmt: skip
    assert code == 2 and "--image-size 6x6 does not fit input" in text, text
    assert not (tmp_path / "small").exists()


def test_ray_tasks_get_an_absolute_tokenizer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Ray task may run in another folder: a relative --tokenizer (folder or file.py:fn) is made
    absolute along with SOURCE and the DATA paths; a name that is no file here is left as given."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tok").mkdir()
    (tmp_path / "hook.py").write_text("def fn(lines):\n    return {}\n")
    for given, wanted in (("tok", str(tmp_path / "tok")), ("hook.py:fn", f"{tmp_path / 'hook.py'}:fn")):
        flags = {"tokenizer": given, "max_length": "16", "image_size": "8", "mean": "0.5"}
        run = RunConfig(data_options=from_flags(DataOptions, flags))
        moved = _absolute_paths(run).data_options
        assert moved.tokenizer == wanted
        assert (moved.max_length, moved.image_size, moved.mean) == (16, (8, 8), (0.5,))
    assert _absolute_paths(RunConfig(tokenizer="org/model")).data_options.tokenizer == ("org/model")


def test_table_rows_and_statuses(serial: tuple[int, str, Path]) -> None:
    code, text, out = serial
    assert code == 0, text
    rows = rows_of(out)
    assert list(rows) == ["fp32", "8bit-static", "8bit-dynamic", "8bit-fp16"]
    assert rows["fp32"]["status"] == "baseline"
    assert rows["fp32"]["size_ratio"] == 1.0 and rows["fp32"]["latency_ratio"] == 1.0
    assert rows["8bit-fp16"]["status"] == "not_supported"
    assert "--mode fp16 is not supported by --target cpu at --bits 8" in rows["8bit-fp16"]["reason"]
    for name in ("8bit-static", "8bit-dynamic"):
        r = rows[name]
        assert r["status"] == "passed" and r["holds_tolerance"], r
        assert 0.9 <= r["top1_agreement"] <= 1.0 and r["accuracy"] is not None
        assert 0.2 < r["size_ratio"] < 1.0  # int8 weights; on a model this small, graph overhead weighs
        assert r["latency_p50_ms"] > 0 and r["slower_than_fp32"] == (r["latency_ratio"] >= 1.0)
        assert r["collapse"] is not None and 0.0 <= r["collapse_rate"] <= 1.0
        assert r["collapse"]["families"] == {}  # not a sequence model
    for needle in (
        "fp32 baseline",
        "8bit-fp16 not supported: --mode fp16 is not supported by --target cpu at --bits 8",
        "8bit-static holds tolerance",
        "8bit-dynamic holds tolerance",
        "smallest that holds tolerance: 8bit-",
        "latency: p50 at batch 1",
        "PASSED |",
    ):
        assert needle in text, text


def test_files_written(serial: tuple[int, str, Path]) -> None:
    _, _, out = serial
    assert sorted(p.name for p in out.iterdir()) == ["sweep.html", "sweep.json", "sweep.png", "trials"]
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "sweep.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and 'id="size-chart"' in html
    assert 'href="trials/8bit-static/report.html"' in html
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["recommendation"]["text"] in html
    # sweep.json is results.SweepReport: versioned, and it reads back as the record it was written from
    report = SweepReport.from_json(summary)
    assert summary["schema_version"] == SCHEMA_VERSION and report.to_json() == summary
    assert isinstance(report.bits, tuple) and report.rows[0].name == "fp32"
    for name in ("8bit-static", "8bit-dynamic"):
        trial = out / "trials" / name
        assert {"model.onnx", "reference.onnx", "qconvert.json", "report.json", "report.html"} <= {
            p.name for p in trial.iterdir()
        }
        manifest = json.loads((trial / "qconvert.json").read_text())
        # the manifest names the folder the trial has now, not the temporary one it was built in
        assert manifest["settings"]["out_dir"] == str(trial)
        assert f"-o {trial}" in manifest["command"] and ".tmp-" not in manifest["command"]
    assert leftovers(out.parent) == []


def test_out_of_tolerance_and_error_rows(files: dict[str, Path], tmp_path: Path) -> None:
    """Without calibration data the static trial errors; the dynamic one runs but misses an
    impossible bound: both are rows, the failed trial's artifacts are kept, and exit is 1."""
    out = tmp_path / "strict"
    code, text = qconvert(
        "sweep", f"{files['model']}:build", "--target", "cpu", "--bits", "8", "--modes", "static,dynamic",
        "--data", str(files["heldout"]), "--tolerance", "cosine>=0.99999999", "-o", str(out), "--workers", "1",
    )  # fmt: skip
    assert code == 1, text
    rows = rows_of(out)
    assert rows["8bit-static"]["status"] == "error"
    assert "static int8 needs calibration data" in rows["8bit-static"]["reason"]
    dynamic = rows["8bit-dynamic"]
    assert dynamic["status"] == "out_of_tolerance" and not dynamic["holds_tolerance"]
    assert "cosine" in dynamic["reason"] and "needs cosine>=0.99999999" in dynamic["reason"]
    assert (out / "trials" / "8bit-dynamic" / "model.onnx").is_file()
    assert not (out / "trials" / "8bit-static").exists()
    assert "8bit-dynamic OUT OF TOLERANCE" in text and "error: (calibration)" in text
    assert "no quantized setting holds the tolerance" in text and "FAILED |" in text


def test_parallel_workers_give_the_serial_figures(
    files: dict[str, Path], serial: tuple[int, str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "parallel"
    code, text = qconvert(*sweep_args(files, out, *SETTINGS, "--workers", "2"))
    assert code == 0, text
    assert "2 trials ran at a time, each limited to 1 thread(s)" in text
    parallel, alone = rows_of(out), rows_of(serial[2])
    assert list(parallel) == list(alone)
    for name in ("8bit-static", "8bit-dynamic"):
        for key in ("status", "top1_agreement", "accuracy", "size_bytes", "collapse_rate"):
            assert parallel[name][key] == alone[name][key], (name, key)
        assert parallel[name]["cosine"] == pytest.approx(alone[name]["cosine"], abs=1e-9)


# --- Ray, on a local cluster started here ----------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[str]:
    """A one-node Ray cluster on 127.0.0.1, in its own temp dir; stopped by signalling the
    `ray start --block` process this fixture started (`ray stop` would stop every Ray process of
    this user on the machine, not just ours)."""
    pytest.importorskip("ray")
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="qcray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", str(port),
         "--node-ip-address", "127.0.0.1", "--num-cpus", "2", "--include-dashboard", "false",
         "--disable-usage-stats", "--temp-dir", temp],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        assert head.stdout is not None
        deadline = time.monotonic() + 60
        for line in head.stdout:
            if "Ray runtime started" in line:
                break
            if time.monotonic() > deadline:
                pytest.fail("the local Ray cluster did not start within 60 s")
        else:
            pytest.fail(f"`ray start` exited with {head.wait()}")
        yield f"127.0.0.1:{port}"
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)  # the group of the process started above
            head.wait()
        subprocess.run(["rm", "-rf", temp], check=False)


def test_ray_executor_on_a_local_cluster(
    files: dict[str, Path], serial: tuple[int, str, Path], ray_cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "ray"
    code, text = qconvert(
        *sweep_args(
            files, out, "--bits", "8", "--modes", "dynamic", "--executor", "ray", "--ray-address", ray_cluster
        )
    )
    assert code == 0, text
    rows, alone = rows_of(out), rows_of(serial[2])
    assert list(rows) == ["fp32", "8bit-dynamic"]
    for key in ("status", "top1_agreement", "accuracy", "size_bytes", "collapse_rate"):
        assert rows["8bit-dynamic"][key] == alone["8bit-dynamic"][key], key
    # the task exported on the node and sent the folder back; its manifest names the folder here
    trial = out / "trials" / "8bit-dynamic"
    assert (trial / "model.onnx").is_file() and (trial / "report.html").is_file()
    assert json.loads((trial / "qconvert.json").read_text())["settings"]["out_dir"] == str(trial)


def test_sweep_help_stays_light() -> None:
    """`qconvert sweep --help` imports neither torch, matplotlib nor ray."""
    probe = (
        "import sys\n"
        "sys.argv = ['qconvert', 'sweep', '--help']\n"
        "from qconvert.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    assert e.code in (0, None), e.code\n"
        "print('MODULES', ' '.join(sorted({m.split('.')[0] for m in sys.modules})))\n"
    )
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--executor" in proc.stdout and "--workers" in proc.stdout
    modules = set(next(ln for ln in proc.stdout.splitlines() if ln.startswith("MODULES")).split()[1:])
    assert not modules & {"torch", "matplotlib", "ray"}


def test_collapse_probe_runs_the_bf16_stand_in_where_there_are_no_bf16_kernels(tmp_path: Path) -> None:
    """A cuda bf16 trial is validated here on an fp32 graph that rounds to bf16, because the CPU
    provider cannot even load the bf16 model.onnx; the probe must run that same stand-in."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from qconvert.calibrate import Dataset
    from qconvert.pipeline import export
    from qconvert.sweep import _probe_collapse

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
        [weight],
    )
    source = tmp_path / "linear.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), source)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    data = tmp_path / "data.npz"
    np.savez(data, x=x)
    config = RunConfig(
        source=str(source), bits=16, mode="bf16", target="cuda", data=str(data), out_dir=tmp_path / "o"
    )
    result = export(config)
    assert result.report["stand_in"] == "bf16"
    probed, error = _probe_collapse(result.out_dir, result.manifest_record, Dataset("x", {"x": x}))
    assert error is None and probed is not None, error
    assert probed.pairs > 0 and probed.rate < 0.05, probed
