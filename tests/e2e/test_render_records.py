"""The renderers read the typed records (results.Report, results.ValidationReport), so what they draw
from a record read back from its JSON file is what they draw from the live record of the run: the
page, the JUnit XML, the text tables and lines, and the CLI's output. And a key renamed inside a
report's `validation` is an error when the record is read, not a row the tables silently leave out.

One real export of the built-in model (cpu, int8, held to cosine>=1 so that it fails and the
per-layer sensitivity runs) per module, and one real `qconvert.validate` of it on labelled data.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import flat

import qconvert
from qconvert.cli._common import err, out
from qconvert.cli.export_cmd import print_export
from qconvert.cli.validate_cmd import print_validation
from qconvert.errors import SourceError
from qconvert.junit import render_junit
from qconvert.pipeline import RunResult, export
from qconvert.report import (
    failure_lines,
    inconclusive_lines,
    level_text,
    random_data_warning,
    sensitivity_rows,
    summary_rows,
)
from qconvert.report_html import render_html, render_validation_html
from qconvert.results import Manifest, Report, ValidationReport, ValidationRun
from qconvert.settings import ValidateConfig
from qconvert.sources import BUILTIN_MODELS, zoo_root

HELDOUT = zoo_root() / "calibration" / BUILTIN_MODELS["digits_cnn"].heldout
TIGHT = "cosine>=1.0"  # no int8 model holds it: the checks fail and sensitivity ranks the layers


@pytest.fixture(scope="module")
def failed_export(tmp_path_factory: pytest.TempPathFactory) -> RunResult:
    out_dir = tmp_path_factory.mktemp("render") / "digits-cpu-int8"
    result = export(
        qconvert.RunConfig(target="cpu", bits=8, out_dir=out_dir, latency_repeats=5, tolerance=TIGHT)
    )
    assert result.verdict == "failed"
    return result


@pytest.fixture(scope="module")
def validated(
    failed_export: RunResult, tmp_path_factory: pytest.TempPathFactory
) -> tuple[ValidationRun, Path]:
    """`qconvert validate` of the export on the labelled held-out data, with --json/--junit/--html."""
    folder = tmp_path_factory.mktemp("validate")
    run = qconvert.validate(
        ValidateConfig(
            candidate=failed_export.out_dir,
            data=str(HELDOUT),
            tolerance=TIGHT,
            json_out=folder / "v.json",
            junit_out=folder / "v.xml",
            html_out=folder / "v.html",
            settings_dir=None,
        )
    )
    assert run.verdict == "failed" and run.report.labels
    return run, folder


def _drawn(draw: Callable[..., None], *args: object) -> str:
    """What a CLI print_* function writes to stdout and stderr, as plain text."""
    with out.capture() as got_out, err.capture() as got_err:
        draw(*args)
    return flat(got_out.get() + got_err.get())


def test_export_draws_the_same_from_report_json(failed_export: RunResult) -> None:
    live = failed_export.record
    read = Report.from_json(json.loads((failed_export.out_dir / "report.json").read_text()))
    assert read is not live and read.to_json() == failed_export.report
    # the text tables and lines; sensitivity ran (failed), so the blame lines are drawn too
    assert sensitivity_rows(live) and any("worst layers" in line for line in failure_lines(live))
    for draw in (
        summary_rows,
        failure_lines,
        inconclusive_lines,
        sensitivity_rows,
        random_data_warning,
        level_text,
    ):
        assert draw(read) == draw(live), draw.__name__
    # the page, and the page the export wrote is that page
    about = Manifest.load(failed_export.out_dir)
    page = render_html(live, about)
    assert render_html(read, about) == page
    assert (failed_export.out_dir / "report.html").read_text(encoding="utf-8") == page
    # the CLI's output
    shown = _drawn(print_export, failed_export, "the defaults")
    assert shown == _drawn(print_export, replace(failed_export, record=read), "the defaults")
    assert "out of tolerance: logits: cosine = " in shown and "per-layer sensitivity" in shown


def test_validate_draws_the_same_from_its_json(validated: tuple[ValidationRun, Path]) -> None:
    run, folder = validated
    live = run.report
    read = ValidationReport.from_json(json.loads((folder / "v.json").read_text()))
    assert read is not live
    assert render_validation_html(read) == render_validation_html(live) == (folder / "v.html").read_text()
    assert render_junit(read) == render_junit(live) == (folder / "v.xml").read_text()
    for draw in (failure_lines, inconclusive_lines, level_text):
        assert draw(read) == draw(live), draw.__name__
    shown = _drawn(print_validation, live, TIGHT)
    assert shown == _drawn(print_validation, read, TIGHT)
    assert "out of tolerance: logits: cosine = " in shown and "accuracy (" in shown


def test_the_validate_page_shows_what_its_record_holds(validated: tuple[ValidationRun, Path]) -> None:
    """The page once read a dict patched to look like report.json: it said where it ran as `None`,
    always "the provider's own kernels", and "no labels" on labelled data."""
    run, folder = validated
    page = (folder / "v.html").read_text()
    assert f'<td class="text">{run.report.provider}</td>' in page
    how = "Q/DQ arithmetic executed exactly" if run.report.exact_qdq else "the provider's own kernels"
    assert how in page
    assert 'id="accuracy"' in page and "No labels" not in page
    reference = run.report.figures.accuracy.reference if run.report.figures.accuracy else None
    assert reference is not None and f"{100 * reference:.2f}%" in page


@pytest.mark.parametrize(
    ("where", "key"),
    [("checks", "bound"), ("checks", "measured"), ("validation", "samples"), ("validation", "outputs")],
)
def test_a_renamed_validation_key_is_an_error_not_a_missing_row(
    failed_export: RunResult, where: str, key: str
) -> None:
    doc = copy.deepcopy(failed_export.report)
    entry = doc["validation"]["checks"][0] if where == "checks" else doc["validation"]
    entry[key + "_renamed"] = entry.pop(key)
    with pytest.raises(SourceError, match=rf"report\.json: validation.*no '{key}' entry"):
        Report.from_json(doc)


@pytest.mark.parametrize(
    ("entry", "key"),
    [
        ("size", "ratio"),
        ("latency", "ratio_p50"),
        ("accuracy", "drop"),
        ("ops", "fp32"),
        ("sensitivity", "ranking"),
    ],
)
def test_a_renamed_report_key_is_an_error_naming_file_and_key(
    failed_export: RunResult, entry: str, key: str
) -> None:
    """Every typed entry, not only the validation: a renamed key names the file, the entry and the key
    (the optional ranking of an available sensitivity included: its table would be empty)."""
    doc = copy.deepcopy(failed_export.report)
    doc[entry][key + "_renamed"] = doc[entry].pop(key)
    with pytest.raises(SourceError, match=rf"report\.json: {entry}.*no '{key}' entry"):
        Report.from_json(doc)
