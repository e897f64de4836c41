"""The three verdicts through the CLI on the built-in digits CNN (real export, real onnxruntime):
PASSED, FAILED and INCONCLUSIVE each with its exit code and message, the interval next to every
figure in the table, the JSON, the JUnit XML and the HTML, the held-out set sized to the tolerance,
and "how many more samples" checked by validating again on that many."""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import QUICKSTART_OUT, flat
from typer.testing import CliRunner

import qconvert
from qconvert.cli import app
from qconvert.sources import zoo_root

runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1"})
DIGITS = zoo_root() / "calibration"


def cli(*args: str | Path) -> tuple[int, str, str]:
    """(exit code, output flattened, stdout as written)."""
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    return result.exit_code, flat(result.output), result.stdout


def digits_subset(path: Path, count: int) -> Path:
    """The first `count` held-out digits (with their labels)."""
    data = np.load(DIGITS / "digits_heldout.npz")
    np.savez(path, input=data["input"][:count], labels=data["labels"][:count])
    return path


@pytest.fixture(scope="module")
def passed_dir(quickstart: tuple[subprocess.CompletedProcess[str], Path]) -> Path:
    proc, cwd = quickstart
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return cwd / QUICKSTART_OUT


def test_passed_shows_every_interval_in_the_table_and_the_report(
    quickstart: tuple[subprocess.CompletedProcess[str], Path], passed_dir: Path
) -> None:
    proc, _ = quickstart
    assert proc.stdout.rstrip().splitlines()[-1].startswith("PASSED | ")
    report = json.loads((passed_dir / "report.json").read_text())
    validation = report["validation"]
    assert report["verdict"] == validation["verdict"] == "passed" and validation["confidence"] == 0.95
    assert all(c["verdict"] == "passed" and c["interval"] for c in validation["checks"])
    # 600 of 600 agree: the Wilson interval [99.36%, 100%] clears top1_agreement>=0.97, in the table too
    top1 = validation["intervals"]["logits"]["top1_agreement"]
    assert top1["method"] == "wilson" and top1["samples"] == 600
    assert f"[{100 * top1['low']:.2f}%, 100.00%]" in proc.stdout
    acc = report["accuracy"]["intervals"]
    assert f"[{100 * acc['model']['low']:.2f}%, {100 * acc['model']['high']:.2f}%]" in proc.stdout
    drop = acc["drop"]  # paired: no sample right in one model and wrong in the other
    assert drop["method"] == "agresti-min" and drop["discordant"] == [0, 0] and drop["high"] < 0.01
    sqnr = validation["intervals"]["logits"]["sqnr_db"]
    assert sqnr["method"] == "bootstrap" and f"[{sqnr['low']:.1f}, {sqnr['high']:.1f}]" in proc.stdout
    worst = validation["intervals"]["logits"]["max_abs"]  # the worst seen: the share that may be worse
    assert worst["method"] == "share-beyond" and f"<={100 * worst['high']:.2g}% worse" in proc.stdout
    html = (passed_dir / "report.html").read_text()
    assert '<span class="verdict passed" id="verdict">PASSED</span>' in html
    assert html.count('<span class="ci" data-field="interval">') >= len(validation["intervals"]["logits"])


def test_validate_json_and_junit_carry_the_intervals(passed_dir: Path, tmp_path: Path) -> None:
    junit = tmp_path / "results.xml"
    code, text, stdout = cli("validate", passed_dir, "--json", "-", "--junit", junit)
    assert code == 0, text
    run = json.loads(stdout)  # --json -: the JSON alone on stdout
    assert run["verdict"] == "passed" and run["passed"] is True
    assert run["validation"]["intervals"]["logits"]["cosine"]["method"] == "bootstrap"
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("failures") == "0"
    properties = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert properties["verdict"] == "passed" and properties["confidence"] == "0.95"
    outs = {case.get("name"): case.findtext("system-out") or "" for case in suite.iter("testcase")}
    assert "logits: top1_agreement = 1 (95% interval [0.99364, 1], 600 samples)" in outs["top1_agreement"]
    # no NaN in 600 samples: at 95%, at most 0.61% of inputs could have one
    assert "beyond the bound on 0% to 0.61% of inputs, 95% interval from 600 samples" in outs["nonfinite"]


def test_failed_interval_lies_outside_the_bound(passed_dir: Path, tmp_path: Path) -> None:
    junit = tmp_path / "results.xml"
    code, text, _ = cli("validate", passed_dir, "--tolerance", "cosine>=0.99999", "--junit", junit)
    assert code == 1 and "FAILED | " in text, text
    assert (
        "out of tolerance: logits: cosine = 0.9999" in text
        and "would pass with --tolerance 'cosine>=" in text
    )
    (failure,) = ET.parse(junit).getroot().iter("failure")
    assert failure.get("type") == "OutOfTolerance" and "95% interval [" in (failure.get("message") or "")


def test_inconclusive_says_how_many_samples_and_that_many_settle_it(tmp_path: Path) -> None:
    """60 held-out digits: every figure is perfect, but 60 samples cannot show the 8-bit bounds at
    95%; the run says so up front, exits 1 with INCONCLUSIVE and the count that would settle it
    (accuracy_drop<=0.01: 194), and --auto has nothing to recover. Validating the same model on
    that many samples passes, on one fewer it does not."""
    out = tmp_path / "out"
    code, text, _ = cli(
        "export",
        "--target",
        "tensorrt",
        "--data",
        digits_subset(tmp_path / "60.npz", 60),
        "--auto",
        "-o",
        out,
    )
    assert code == 1 and "INCONCLUSIVE | " in text, text
    assert "60 held-out samples are too few to pass at all: nonfinite<=0 needs at least 72" in text
    assert "inconclusive: logits: top1_agreement = 1, 95% interval [0.9398, 1] on 60 samples" in text
    assert "about 194 in all (134 more) would settle it if the figures hold" in text
    assert "--auto: nothing to recover: the verdict is INCONCLUSIVE for want of held-out samples" in text
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"] == "inconclusive" and report["passed"] is False
    assert report["validation"]["samples_to_settle"] == 194 and report["validation"]["data_limited"]
    assert report["fallback"] == {"needed": False}  # no layer kept in float: none is to blame
    html = (out / "report.html").read_text()
    assert 'id="verdict">INCONCLUSIVE</span>' in html and "about 194 in all (134 more)" in html

    junit = tmp_path / "60.xml"
    code, text, _ = cli("validate", out, "--junit", junit)  # the export's own 60 samples
    assert code == 1 and "INCONCLUSIVE | " in text, text
    types = {f.get("type") for f in ET.parse(junit).getroot().iter("failure")}
    assert types == {"Inconclusive"}  # a CI shows it red, and says why

    settled = qconvert.validate(
        qconvert.ValidateConfig(candidate=out, data=digits_subset(tmp_path / "194.npz", 194))
    )
    assert settled.verdict == "passed" and settled
    short = qconvert.validate(
        qconvert.ValidateConfig(candidate=out, data=digits_subset(tmp_path / "193.npz", 193))
    )
    assert short.verdict == "inconclusive" and not short
    assert [c.bound.metric for c in short.validation.failures] == ["accuracy_drop"]
    # a stricter level needs more: at 99% the 194 samples are too few again
    strict = qconvert.validate(
        qconvert.ValidateConfig(
            candidate=out, data=tmp_path / "194.npz", confidence=0.99, json_out=tmp_path / "s.json"
        )
    )
    assert strict.verdict == "inconclusive"
    assert json.loads((tmp_path / "s.json").read_text())["validation"]["confidence"] == 0.99


def test_held_out_share_grows_to_what_the_tolerance_needs(tmp_path: Path) -> None:
    """800 labelled digits as --calibration and no --data: 20% (160) cannot show accuracy_drop<=0.01
    at 95% even if all agree, so 194 are set aside (606 stay to calibrate on), and the run passes."""
    calib, held = np.load(DIGITS / "digits_calib.npz"), np.load(DIGITS / "digits_heldout.npz")
    both = tmp_path / "800.npz"
    np.savez(
        both,
        input=np.concatenate([calib["input"], held["input"]]),
        labels=np.concatenate([calib["labels"], held["labels"]]),
    )
    code, text, _ = cli("export", "--target", "cpu", "--calibration", both, "-o", tmp_path / "out")
    assert code == 0 and "PASSED | " in text, text
    note = (
        "no --data given: 194 of the 800 calibration samples were set aside for validation and not used for "
        "calibration (more than 20%: passing accuracy_drop<=0.01 at 95% confidence needs at least 194 held-out "
        "samples)"
    )
    assert note in text
    manifest: dict[str, Any] = json.loads((tmp_path / "out" / "qconvert.json").read_text())
    assert (
        manifest["data"]["validation"]["samples"] == 194 and manifest["data"]["calibration"]["samples"] == 606
    )


def test_a_confidence_outside_its_range_is_exit_2(tmp_path: Path) -> None:
    code, text, _ = cli("export", "--confidence", "1.5", "-o", tmp_path / "out")
    assert code == 2 and "--confidence 1.5: give the confidence level" in text, text
    assert not (tmp_path / "out").exists()
