"""`qconvert validate`: an exported artifact checked against its reference as a release gate.

One real export of the built-in model (cpu, int8) is made per module; every test validates it
through the CLI (in-process) or the library, with real onnxruntime and torch runs."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY_CNN, cli, write_model

import qconvert
from qconvert.errors import ConfigError
from qconvert.pipeline import export
from qconvert.runtime import make_session
from qconvert.settings import ValidateConfig
from qconvert.sources import BUILTIN_MODELS, zoo_root
from qconvert.tolerance import METRIC_BOUNDS, Bound, Tolerance, parse_tolerance, tolerance_from_files
from qconvert.validation import evaluate
from qconvert.validation.metrics import compare

HELDOUT = zoo_root() / "calibration" / BUILTIN_MODELS["digits_cnn"].heldout
CALIB = zoo_root() / "calibration" / BUILTIN_MODELS["digits_cnn"].calibration
TORCH_SOURCE = str(zoo_root() / "models" / BUILTIN_MODELS["digits_cnn"].factory)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `qconvert export --bits 8 --target cpu` of the built-in model."""
    out = tmp_path_factory.mktemp("export") / "digits-cpu-int8"
    result = export(qconvert.RunConfig(target="cpu", bits=8, out_dir=out, latency_repeats=5))
    assert result.passed
    return out


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run every test in an empty folder, so no qconvert.toml / pyproject.toml is picked up by chance."""
    monkeypatch.chdir(tmp_path)


def _outputs(path: Path) -> np.ndarray:
    x = np.load(HELDOUT)["input"]
    return make_session(path).inner.run(None, {"input": x})[0]


# --- pass, fail, reports ---------------------------------------------------------------------------


def test_pass_writes_json_and_junit(out_dir: Path, tmp_path: Path) -> None:
    code, text = cli("validate", str(out_dir), "--json", "r.json", "--junit", "r.xml", "--data", str(HELDOUT))
    assert code == 0, text
    assert "PASSED" in text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["passed"] is True
    assert report["samples"] == len(np.load(HELDOUT)["labels"])
    # the metrics are those of the candidate against the reference, recomputed here independently
    expected = compare(_outputs(out_dir / "reference.onnx"), _outputs(out_dir / "model.onnx"))
    logits = report["validation"]["outputs"]["logits"]
    for metric in ("cosine", "rel_error", "kl_div", "top5_agreement", "top1_agreement", "max_abs"):
        assert logits[metric] == pytest.approx(expected[metric], rel=1e-9, abs=1e-12), metric
    assert 0 < logits["rel_error"] < 0.1 and 0 < logits["kl_div"] < 0.01
    cases = list(ET.parse(tmp_path / "r.xml").getroot().iter("testcase"))
    checks = report["validation"]["checks"]
    assert [(c.get("classname"), c.get("name")) for c in cases] == [
        (c["output"], c["metric"]) for c in checks
    ]
    assert {"cosine", "top1_agreement", "accuracy_drop"} <= {c.get("name") for c in cases}
    assert not any(c.find("failure") is not None for c in cases)


def test_html_report_of_a_failed_gate(out_dir: Path, tmp_path: Path) -> None:
    from html.parser import HTMLParser

    code, text = cli(
        "validate", str(out_dir), "--data", str(HELDOUT), "--tolerance", "cosine>=1.0", "--html", "gate.html"
    )
    assert code == 1, text
    page = (tmp_path / "gate.html").read_text()
    HTMLParser().feed(page)  # well-formed enough to parse
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "FAILED" in page and "cosine&gt;=1" in page
    for svg in page.split("<svg")[1:]:  # every chart is valid XML
        ET.fromstring("<svg" + svg.split("</svg>")[0] + "</svg>")


def test_too_tight_tolerance_exits_1_naming_metric_and_needed_tolerance(
    out_dir: Path, tmp_path: Path
) -> None:
    code, text = cli(
        "validate", str(out_dir), "--tolerance", "cosine>=0.9999999,kl_div<=1e-12", "--junit", "r.xml"
    )
    assert code == 1, text
    assert "FAILED" in text
    assert "logits: cosine = " in text and "logits: kl_div = " in text
    needed = text.split("would pass with --tolerance '")[1].split("'")[0]
    (bound,) = parse_tolerance(needed)
    measured = compare(_outputs(out_dir / "reference.onnx"), _outputs(out_dir / "model.onnx"))[bound.metric]
    assert bound.holds(measured) and not Bound(bound.metric, 0.9999999).holds(measured)
    root = ET.parse(tmp_path / "r.xml").getroot()
    suite = root.find("testsuite")
    assert suite is not None
    failed = {(c.get("classname"), c.get("name")): c.find("failure") for c in suite.iter("testcase")}
    assert {k for k, f in failed.items() if f is not None} == {("logits", "cosine"), ("logits", "kl_div")}
    assert suite.get("failures") == "2" and suite.get("tests") == str(len(failed))
    message = failed[("logits", "cosine")].get("message")  # type: ignore[union-attr]
    assert "needs cosine>=0.9999999 " in message
    assert "would pass with --tolerance 'cosine>=" in message


def test_reports_are_written_on_failure_too_and_never_over_an_input(out_dir: Path, tmp_path: Path) -> None:
    data = tmp_path / "heldout.npz"
    data.write_bytes(HELDOUT.read_bytes())
    before = data.read_bytes()
    code, text = cli("validate", str(out_dir), "--data", str(data), "--json", str(data))
    assert code == 2 and "--json" in text and "input file" in text
    assert data.read_bytes() == before
    (tmp_path / "r.xml").write_text("keep")
    code, text = cli("validate", str(out_dir), "--junit", "r.xml")
    assert code == 2 and "--force" in text
    assert (tmp_path / "r.xml").read_text() == "keep"
    code, _ = cli("validate", str(out_dir), "--junit", "r.xml", "--force", "--tolerance", "cosine>=1")
    assert code == 1
    assert ET.parse(tmp_path / "r.xml").getroot().find("testsuite").get("failures") == "1"  # type: ignore[union-attr]


# --- tolerance files -------------------------------------------------------------------------------


def test_qconvert_toml_tightens_and_cli_overrides_it(out_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "qconvert.toml").write_text('[tolerance]\ncosine = 0.9999999\n"logits:max_abs" = 100\n')
    code, text = cli("validate", str(out_dir), "--json", "a.json")
    assert code == 1 and "logits: cosine" in text
    report = json.loads((tmp_path / "a.json").read_text())
    assert report["tolerance_source"].endswith("qconvert.toml")
    assert "cosine>=1e+00" not in report["tolerance"] and "logits:max_abs<=100" in report["tolerance"]
    code, text = cli("validate", str(out_dir), "--tolerance", "cosine>=0.99")
    assert code == 0, text


def test_pyproject_table_is_read_and_qconvert_toml_wins(out_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "x"\n[tool.qconvert.tolerance]\nkl_div = 1e-12\n'
    )
    code, text = cli("validate", str(out_dir))
    assert code == 1 and "logits: kl_div" in text
    (tmp_path / "qconvert.toml").write_text("[tolerance]\nkl_div = 0.5\n")
    code, text = cli("validate", str(out_dir))
    assert code == 0, text


@pytest.mark.parametrize(
    ("name", "text", "needles"),
    [
        ("qconvert.toml", "[tolerance]\nfoo = 1\n", ["qconvert.toml", "'foo'", "unknown metric"]),
        (
            "qconvert.toml",
            '[tolerance]\ncosine = "high"\n',
            ["qconvert.toml", "'cosine'", "must be a number"],
        ),
        ("qconvert.toml", "[tolerance\n", ["qconvert.toml", "not valid TOML"]),
        ("pyproject.toml", "[tool.qconvert]\ntolerance = 3\n", ["pyproject.toml", "tool.qconvert.tolerance"]),
    ],
)
def test_malformed_tolerance_file_exits_2(
    out_dir: Path, tmp_path: Path, name: str, text: str, needles: list[str]
) -> None:
    (tmp_path / name).write_text(text)
    code, output = cli("validate", str(out_dir))
    assert code == 2, output
    for needle in needles:
        assert needle in output, output


def test_layering_defaults_file_cli() -> None:
    file_bounds = (Bound("cosine", 0.999, explicit=True), Bound("max_abs", 1.0, "logits", explicit=True))
    cli = parse_tolerance("max_abs<=2,logits:top1_agreement>=0.5")
    bounds = {(b.output, b.metric): b.value for b in Tolerance.layered(8, file_bounds, cli).bounds}
    assert bounds[(None, "cosine")] == 0.999  # the file beats the default
    assert bounds[(None, "max_abs")] == 2 and ("logits", "max_abs") not in bounds  # unscoped CLI beats all
    assert bounds[(None, "top1_agreement")] == 0.97 and bounds[("logits", "top1_agreement")] == 0.5


def test_a_scoped_bound_beats_an_unscoped_one_on_its_output() -> None:
    ref = np.random.default_rng(0).standard_normal((50, 10))
    cand = ref + 0.3 * np.random.default_rng(1).standard_normal((50, 10))
    cosine = compare(ref, cand)["cosine"]
    assert cosine < 0.99
    loose = Tolerance.layered(
        8, parse_tolerance("cosine>=0.99"), parse_tolerance(f"logits:cosine>={cosine - 0.01}")
    )
    cosine_checks = [
        c for c in evaluate(["logits"], [ref], [cand], loose).checks if c.bound.metric == "cosine"
    ]
    assert [(c.bound.output, c.passed) for c in cosine_checks] == [("logits", True)]
    strict = evaluate(["logits"], [ref], [cand], Tolerance.layered(8, parse_tolerance("cosine>=0.99")))
    assert "cosine" in {c.bound.metric for c in strict.failures}


def test_tolerance_files_absent_give_nothing(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert tolerance_from_files(tmp_path) == ((), None)


# --- task metric, speed, torch reference ------------------------------------------------------------

METRIC = """
import numpy as np


def accuracy(outputs, labels):
    return float((outputs["logits"].argmax(1) == labels).mean())


def broken(outputs, labels):
    raise RuntimeError("no")


def distinct(outputs, labels):  # fine on the held-out set, refuses the repeats of a bootstrap resample
    if len(np.unique(outputs["logits"], axis=0)) < len(outputs["logits"]):
        raise ValueError("a sample repeats")
    return 1.0
"""


def test_metric_callable_is_reported_for_both_and_bounded(out_dir: Path, tmp_path: Path) -> None:
    metric = write_model(tmp_path / "m", METRIC, "metric.py")
    code, text = cli(
        "validate",
        str(out_dir),
        "--metric",
        f"{metric}:accuracy",
        "--json",
        "r.json",
        "--tolerance",
        "task_drop<=-1",
    )
    assert code == 1 and "model: task_drop" in text, text
    task = json.loads((tmp_path / "r.json").read_text())["task"]
    labels = np.load(HELDOUT)["labels"]
    ref_acc = float((_outputs(out_dir / "reference.onnx").argmax(1) == labels).mean())
    cand_acc = float((_outputs(out_dir / "model.onnx").argmax(1) == labels).mean())
    assert task["reference"] == ref_acc and task["candidate"] == cand_acc
    assert task["drop"] == pytest.approx(ref_acc - cand_acc)
    code, text = cli(
        "validate", str(out_dir), "--metric", f"{metric}:accuracy", "--tolerance", "task_drop<=0.01",
        "--json", "ok.json",
    )  # fmt: skip
    assert code == 0, text
    # the drop's interval: reference and candidate scored on the same bootstrap resamples
    task = json.loads((tmp_path / "ok.json").read_text())["task"]
    assert task["interval"]["method"] == "bootstrap" and task["interval"]["samples"] == len(labels)
    assert task["interval"]["low"] <= task["drop"] <= task["interval"]["high"] <= 0.01
    code, text = cli(
        "validate", str(out_dir), "--metric", f"{metric}:distinct", "--tolerance", "task_drop<=0.01"
    )
    assert code == 2 and "on a bootstrap resample of the held-out samples" in text, text
    code, text = cli("validate", str(out_dir), "--metric", f"{metric}:broken")
    assert code == 2 and "--metric" in text and "RuntimeError: no" in text
    code, text = cli("validate", str(out_dir), "--tolerance", "task_drop<=0.01")
    assert code == 2 and "--metric file.py:fn" in text


def test_require_speedup_reports_the_measured_ratio(out_dir: Path, tmp_path: Path) -> None:
    code, text = cli("validate", str(out_dir), "--require-speedup", "--json", "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    speed = report["speed"]
    ratio = speed["reference"]["p50_ms"] / speed["candidate"]["p50_ms"]
    assert speed["speedup"] == pytest.approx(ratio)
    (check,) = [c for c in report["validation"]["checks"] if c["metric"] == "speedup"]
    assert check["measured"] == pytest.approx(ratio) and check["bound"] == "speedup>=1"
    assert code == (0 if ratio >= 1 else 1), text
    assert f"speedup {ratio:.2f}x" in text
    # a bound no candidate can meet fails, with the ratio that was measured
    code, text = cli("validate", str(out_dir), "--tolerance", "speedup>=1000")
    assert code == 1 and "model: speedup = " in text and "needs speedup>=1000" in text


def test_torch_source_as_reference(out_dir: Path, tmp_path: Path) -> None:
    code, text = cli("validate", str(out_dir), "--reference", TORCH_SOURCE, "--json", "r.json")
    assert code == 0, text
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["reference"] == TORCH_SOURCE
    onnx_ref = compare(_outputs(out_dir / "reference.onnx"), _outputs(out_dir / "model.onnx"))
    # PyTorch and its fp32 ONNX export agree closely, so the figures against each are close but
    # not computed from the same numbers
    assert report["validation"]["outputs"]["logits"]["cosine"] == pytest.approx(onnx_ref["cosine"], abs=1e-5)


def test_library_api_matches_the_cli(out_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "qconvert.toml").write_text("[tolerance]\ncosine = 1.5\n")  # ignored: settings_dir=None
    run = qconvert.validate(ValidateConfig(candidate=out_dir, settings_dir=None))
    assert isinstance(run, qconvert.ValidationRun) and run
    assert run.report.tolerance_source is None
    assert not qconvert.validate(ValidateConfig(candidate=out_dir))  # reads ./qconvert.toml
    assert {"rel_error", "kl_div", "top5_agreement"} <= set(run.validation.outputs["logits"])


def test_calibration_data_as_validation_data_is_flagged(out_dir: Path, tmp_path: Path) -> None:
    code, text = cli("validate", str(out_dir), "--data", str(CALIB), "--json", "r.json")
    assert code == 0, text
    notes = json.loads((tmp_path / "r.json").read_text())["notes"]
    assert any("the validation data is the calibration data" in n for n in notes)
    code, text = cli("validate", str(out_dir), "--data", str(HELDOUT), "--json", "h.json")
    assert not any("calibration" in n for n in json.loads((tmp_path / "h.json").read_text())["notes"])


# --- bad input: exit 2, a clear message, no traceback -------------------------------------------------


def test_bad_inputs_exit_2(out_dir: Path, tmp_path: Path) -> None:
    code, text = cli("validate", "missing-dir")
    assert code == 2 and "CANDIDATE missing-dir: no such file or folder" in text
    code, text = cli("validate", str(out_dir / "model.onnx"))
    assert code == 2 and "--reference is needed" in text
    cnn = write_model(tmp_path / "cnn", TINY_CNN)
    code, text = cli("validate", str(out_dir), "--reference", f"{cnn}:build")
    assert code == 2 and "--reference" in text and "inputs" in text, text
    bad = tmp_path / "bad.npz"
    np.savez(bad, input=np.zeros((4, 3, 8, 8), np.float32))
    code, text = cli("validate", str(out_dir), "--data", str(bad))
    assert code == 2 and "expects samples of shape [1, 8, 8]" in text
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    code, text = cli("validate", str(garbage), "--reference", str(out_dir / "reference.onnx"))
    assert code == 2 and "not a valid ONNX model" in text
    code, text = cli("validate", str(out_dir), "--tolerance", "logits:speedup>=1")
    assert code == 2 and "whole model" in text


def test_new_metrics_have_their_direction() -> None:
    assert METRIC_BOUNDS["rel_error"] == "max" and METRIC_BOUNDS["kl_div"] == "max"
    assert METRIC_BOUNDS["top5_agreement"] == "min" and METRIC_BOUNDS["task_drop"] == "max"
    with pytest.raises(ConfigError, match="bounded with <="):
        parse_tolerance("kl_div>=0.1")


def test_relative_error_top5_and_kl_against_direct_formulas() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((40, 10))
    cand = ref + 0.5 * rng.standard_normal((40, 10))
    m = compare(ref, cand)
    assert m["rel_error"] == pytest.approx(np.abs(ref - cand).sum() / np.abs(ref).sum())
    p = np.exp(ref) / np.exp(ref).sum(1, keepdims=True)
    q = np.exp(cand) / np.exp(cand).sum(1, keepdims=True)
    assert m["kl_div"] == pytest.approx(float((p * np.log(p / q)).sum(1).mean()))
    ranks = (-cand).argsort(1).argsort(1)[np.arange(40), ref.argmax(1)]  # rank of ref's top-1 in cand
    assert m["top5_agreement"] == pytest.approx(float((ranks < 5).mean()))
    assert 0 < m["top5_agreement"] < 1 or m["top5_agreement"] >= m["top1_agreement"]
    # top-5 of four classes would always agree: it is not reported there
    assert "top5_agreement" not in compare(ref[:, :4], cand[:, :4])


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("{tmp}/missing.py:f", "no such file"),
        ("{tmp}/metrics.py:f", "has no callable 'f'. Callables there: g"),
        ("{tmp}/metrics.py", "is not file.py:fn"),
    ],
)
def test_bad_metric_names_the_flag(out_dir: Path, tmp_path: Path, spec: str, fragment: str) -> None:
    (tmp_path / "metrics.py").write_text("def g(outputs, labels):\n    return 1.0\n")
    code, text = cli("validate", str(out_dir), "--metric", spec.format(tmp=tmp_path))
    assert code == 2 and "--metric" in text and fragment in text, text
    assert "Traceback" not in text
