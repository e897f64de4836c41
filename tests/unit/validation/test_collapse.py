"""The representational-collapse probe (`qconvert validate --probe collapse`).

One real `qconvert export copycount` (cpu, int8) per module; the broken candidates are built here
from its fp32 reference.onnx (a constant-output graph) or from the session's digits CNN export
(weights rounded to 2 bits), and every model runs in onnxruntime. The probes run on the first
HELDOUT_SAMPLES held-out sequences to keep the module fast."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import QUICKSTART_OUT, cli
from onnx import helper, numpy_helper

from qconvert.calibrate import ModelInput, load_dataset
from qconvert.errors import ConfigError
from qconvert.sources import BUILTIN_MODELS, zoo_root
from qconvert.validation.collapse import collapse_options, probe_collapse, sample_pairs, vocab_from_graph

CALIBRATION = zoo_root() / "calibration"
COPYCOUNT_HELDOUT = CALIBRATION / BUILTIN_MODELS["copycount"].heldout
DIGITS_HELDOUT = CALIBRATION / BUILTIN_MODELS["digits_cnn"].heldout
# everything but the collapse probe lenient, so an exit code says what the probe decided
LENIENT = "cosine>=-1,top1_agreement>=0,accuracy_drop<=1"
HELDOUT_SAMPLES = 300


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`qconvert export copycount` (cpu, static int8 Q/DQ, no recovery), through the CLI: the setting
    that loses counting lengths, so the probe has something to find (the cpu default for this
    transformer, dynamic int8 after SmoothQuant, keeps them). The format is fixed so that the graph
    does not depend on which format measures faster on this machine."""
    out = tmp_path_factory.mktemp("copycount") / "int8"
    code, text = cli(
        "export",
        "copycount",
        "-o",
        str(out),
        "--mode",
        "static",
        "--recover",
        "none",
        "--tolerance",
        LENIENT,
        "--target-option",
        "format=qdq",
    )
    assert code == 0, text
    return out


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first HELDOUT_SAMPLES sequences of the built-in held-out set."""
    with np.load(COPYCOUNT_HELDOUT) as z:
        arrays = {k: z[k][:HELDOUT_SAMPLES] for k in z.files}
    path = tmp_path_factory.mktemp("data") / "heldout.npz"
    np.savez(path, **arrays)
    return path


@pytest.fixture(scope="module")
def heldout(heldout_file: Path):  # -> Dataset
    return load_dataset(heldout_file, [ModelInput("tokens", (None, 32), "int64")], flag="--data")


@pytest.fixture(scope="module")
def constant(exported: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fp32 reference with its token input multiplied by 0 first: every sequence reads as
    padding, so the output is the same for every input."""
    model = onnx.load(str(exported / "reference.onnx"))
    graph = model.graph
    name = graph.input[0].name
    for node in graph.node:
        node.input[:] = [f"{name}_zeroed" if i == name else i for i in node.input]
    graph.initializer.append(numpy_helper.from_array(np.zeros((), dtype=np.int64), f"{name}_zero"))
    graph.node.insert(0, helper.make_node("Mul", [name, f"{name}_zero"], [f"{name}_zeroed"]))
    path = tmp_path_factory.mktemp("constant") / "constant.onnx"
    onnx.save(model, str(path))
    return path


def test_reference_against_itself_collapses_nothing(exported: Path, heldout) -> None:
    result = probe_collapse(exported / "reference.onnx", exported / "reference.onnx", heldout)
    assert result.rate == 0.0 and result.collapsed == 0
    assert result.sampled == 2000 and result.pairs > 1500
    assert set(result.outputs) == {"count", "copy"}
    assert {o.rule for o in result.outputs.values()} == {"top1"}
    assert set(result.families) == {"copy", "count"}
    for family in result.families.values():
        assert not family.lost
        assert family.kept_longest == family.lengths[-1].length
        assert family.reference_longest == family.candidate_longest


def test_constant_output_collapses_every_pair(exported: Path, constant: Path, heldout) -> None:
    result = probe_collapse(exported / "reference.onnx", constant, heldout)
    assert result.rate == 1.0 and result.collapsed == result.pairs > 0
    for family in result.families.values():
        assert all(p.candidate_separated == 0 for p in family.lengths)
        assert family.kept_longest is None and family.candidate_longest is None


def test_int8_families_report_lengths(exported: Path, heldout) -> None:
    result = probe_collapse(exported / "reference.onnx", exported / "model.onnx", heldout, optimize=False)
    copy, count = result.families["copy"], result.families["count"]
    assert [p.length for p in copy.lengths] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32]
    assert [p.length for p in count.lengths] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 31]
    assert all(p.pairs == 15 for p in count.lengths)  # one pair per symbol: [t x n] vs [t x (n+1)]
    assert all(p.pairs == 32 for p in copy.lengths)
    assert count.reference_longest is not None and count.reference_longest >= 8
    # the built-in model's documented behaviour: int8 keeps copying but loses counting lengths
    assert count.lost and count.kept_longest is not None and count.kept_longest < count.reference_longest
    assert copy.kept_longest == 32
    assert 0.0 < result.rate < 0.1 and result.worst == "count"
    family = result.as_json()["families"]["count"]
    assert family["lengths"][-1] == 31 and len(family["candidate_rate"]) == len(family["lengths"])


def test_digits_cnn_has_pairs_and_no_families(
    quickstart: tuple[subprocess.CompletedProcess[str], Path], tmp_path: Path
) -> None:
    proc, cwd = quickstart
    assert proc.returncode == 0, proc.stdout + proc.stderr
    reference = cwd / QUICKSTART_OUT / "reference.onnx"  # the digits CNN in fp32
    model = onnx.load(str(reference))
    for init in model.graph.initializer:  # weights rounded to 2 bits: 4 levels per tensor
        w = numpy_helper.to_array(init)
        if w.ndim > 1:
            step = np.abs(w).max() / 1.5
            rounded = (np.clip(np.round(w / step + 0.5), -1, 2) - 0.5) * step
            init.CopyFrom(numpy_helper.from_array(rounded.astype(w.dtype), init.name))
    candidate = tmp_path / "two_bit.onnx"
    onnx.save(model, str(candidate))
    data = load_dataset(DIGITS_HELDOUT, [ModelInput("input", (None, 1, 8, 8), "float32")], flag="--data")
    result = probe_collapse(reference, candidate, data, max_pairs=500)
    assert result.sampled == 500 and result.outputs["logits"].rule == "top1"
    assert result.rate > 0.05
    assert result.families == {}
    assert result.families_skipped is not None and "not a sequence model" in result.families_skipped


def test_validate_probe_collapse_json(exported: Path, heldout_file: Path, tmp_path: Path) -> None:
    report, page = tmp_path / "v.json", tmp_path / "v.html"
    code, text = cli(
        "validate", str(exported), "--data", str(heldout_file), "--probe", "collapse",
        "--json", str(report), "--html", str(page), "--tolerance", LENIENT + ",collapse_rate<=0.5",
    )  # fmt: skip
    assert code == 0, text
    assert "collapse (count, separated = top-1)" in text and "kept up to" in text
    doc = json.loads(report.read_text())
    collapse = doc["collapse"]
    assert set(collapse["families"]) == {"copy", "count"} and collapse["sampled"] == 2000
    check = next(c for c in doc["validation"]["checks"] if c["metric"] == "collapse_rate")
    assert check["passed"] and check["measured"] == collapse["rate"]
    html = page.read_text()
    assert 'id="collapse"' in html and "count: [t x L] vs [t x (L+1)]" in html


def test_collapse_rate_bound_fails_with_exit_1(
    exported: Path, constant: Path, heldout_file: Path, tmp_path: Path
) -> None:
    report = tmp_path / "v.json"
    code, text = cli(
        "validate", str(constant), "--reference", str(exported / "reference.onnx"),
        "--data", str(heldout_file), "--probe", "collapse", "--json", str(report),
        "--tolerance", LENIENT + ",collapse_rate<=0.02",
    )  # fmt: skip
    assert code == 1, text
    failures = [c for c in json.loads(report.read_text())["validation"]["checks"] if not c["passed"]]
    assert [(c["metric"], c["measured"]) for c in failures] == [("collapse_rate", 1.0)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--probe", "nope"), "--probe 'nope' is not a probe. Valid: collapse"),
        (("--tolerance", "collapse_rate<=0.1"), "add --probe collapse"),
        (("--probe", "collapse", "--probe-option", "colour=red"), "unknown option for the collapse probe"),
        (("--probe", "collapse", "--probe-option", "lengths=4,x"), "positive integers joined by commas"),
        (("--probe-option", "token=3"), "--probe-option applies to a probe"),
    ],
)
def test_bad_probe_arguments_exit_2(exported: Path, args: tuple[str, ...], message: str) -> None:
    code, text = cli("validate", str(exported), *args)
    assert code == 2 and message in text, text


def test_probe_needs_an_onnx_reference(exported: Path) -> None:
    source = str(zoo_root() / "models" / BUILTIN_MODELS["copycount"].factory)
    code, text = cli("validate", str(exported / "model.onnx"), "--reference", source, "--probe", "collapse")
    assert code == 2 and "needs the reference as ONNX" in text, text


def test_sample_pairs_are_distinct_ordered_and_seeded() -> None:
    assert sample_pairs(4, 10).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    pairs = sample_pairs(300, 1000, seed=3)
    assert len({tuple(p) for p in pairs.tolist()}) == 1000
    assert (pairs[:, 0] < pairs[:, 1]).all() and pairs.max() < 300
    assert (sample_pairs(300, 1000, seed=3) == pairs).all()
    assert not (sample_pairs(300, 1000, seed=4) == pairs).all()


def test_options_and_vocab(exported: Path) -> None:
    assert collapse_options([("token", "5"), ("lengths", "8,4")]) == {"token": 5, "lengths": (8, 4)}
    with pytest.raises(ConfigError, match="max_pairs"):
        collapse_options([("max_pairs", "0")])
    assert vocab_from_graph(exported / "reference.onnx", "tokens") == 16


def mean_pool_model(path: Path, table: np.ndarray) -> Path:
    """tokens [N, S] (S dynamic) -> mean of their embeddings [N, 1, d]: an output that is not class
    scores, so pairs are judged by distance. Built with onnx.helper, no torch."""
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "tokens"], ["embedded"]),
            helper.make_node("ReduceMean", ["embedded", "axis"], ["pooled"], keepdims=1),
        ],
        "mean_pool",
        [helper.make_tensor_value_info("tokens", onnx.TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("pooled", onnx.TensorProto.FLOAT, ["batch", 1, table.shape[1]])],
        [numpy_helper.from_array(table, "table"), numpy_helper.from_array(np.array([1], np.int64), "axis")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_dynamic_sequence_axis_and_distance_rule(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    table = rng.standard_normal((12, 8)).astype(np.float32)
    reference = mean_pool_model(tmp_path / "ref.onnx", table)
    # the candidate keeps one significant bit per weight (sign and a power of two)
    rounded = (np.sign(table) * 2.0 ** np.round(np.log2(np.abs(table)))).astype(np.float32)
    candidate = mean_pool_model(tmp_path / "cand.onnx", rounded)
    tokens = rng.integers(1, 12, (40, 10))
    data = load_dataset_from(tmp_path, tokens)
    result = probe_collapse(reference, candidate, data, max_pairs=300)
    assert result.outputs["pooled"].rule == "distance" and result.outputs["pooled"].threshold > 0
    copy, count = result.families["copy"], result.families["count"]
    assert [p.length for p in copy.lengths] == [1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64]
    assert count.lengths[-1].length == 63
    # a mean over [t x n] equals one over [t x (n+1)]: no model of this kind separates count pairs
    assert count.reference_longest is None and all(p.reference_separated == 0 for p in count.lengths)
    # one differing token among L is diluted as 1/L: the reference separates short copy pairs only
    assert copy.lengths[0].reference_rate == 1.0 and copy.lengths[-1].reference_rate < 1.0
    itself = probe_collapse(reference, reference, data, max_pairs=300, lengths=(3, 5), token=4)
    assert [p.length for p in itself.families["copy"].lengths] == [3, 5]
    assert itself.rate == 0.0 and all(p.pairs == 1 for p in itself.families["count"].lengths)


def load_dataset_from(folder: Path, tokens: np.ndarray):  # -> Dataset
    np.savez(folder / "tokens.npz", tokens=tokens)
    return load_dataset(folder / "tokens.npz", [ModelInput("tokens", (None, None), "int64")], flag="--data")


def test_nan_outputs_never_separate(exported: Path, heldout, tmp_path: Path) -> None:
    """A candidate whose scores are NaN tells no inputs apart: every pair collapses."""
    model = onnx.load(str(exported / "reference.onnx"))
    graph = model.graph
    graph.initializer.append(numpy_helper.from_array(np.array(np.nan, dtype=np.float32), "nan"))
    for out in graph.output:
        for node in graph.node:
            node.output[:] = [f"{o}_raw" if o == out.name else o for o in node.output]
        graph.node.append(helper.make_node("Mul", [f"{out.name}_raw", "nan"], [out.name]))
    path = tmp_path / "nan.onnx"
    onnx.save(model, str(path))
    result = probe_collapse(exported / "reference.onnx", path, heldout, max_pairs=200, lengths=(4,))
    assert result.rate == 1.0 and all(o.collapsed == o.pairs for o in result.outputs.values())
    assert all(f.lengths[0].candidate_separated == 0 for f in result.families.values())
