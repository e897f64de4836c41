"""Validation metrics and tolerance checks, latency measurement, and sessions off-target.

`compare` and `evaluate` are checked on constructed arrays whose answers are computed here
independently; the runtime and benchmark tests use real onnxruntime sessions on a tiny model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from _models import INPUT_NAME, OUTPUT_NAME, images, torch_logits, write_cnn_mlp

from qconvert.benchmark import interleaved_latency
from qconvert.calibrate import Dataset, ModelInput
from qconvert.errors import ConfigError
from qconvert.runtime import make_session
from qconvert.targets import TARGETS
from qconvert.tolerance import Bound, Tolerance, parse_tolerance
from qconvert.validation import Check, ValidationResult, compare, evaluate


def _logits(n: int = 10, classes: int = 4, seed: int = 0) -> np.ndarray:
    """Class scores around 10 with a clear winner per row (it leads by at least 0.5)."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(9.0, 10.0, (n, classes))
    scores[np.arange(n), rng.integers(0, classes, n)] = 10.5
    return scores.astype(np.float32)


def _flip_argmax(scores: np.ndarray, rows: list[int]) -> np.ndarray:
    """A copy whose winner changes in exactly `rows`, by a nudge small enough to keep cosine high."""
    out = scores.copy()
    for r in rows:
        out[r, int(np.argmin(out[r]))] = out[r].max() + 0.1
    return out


# --- compare ----------------------------------------------------------------------------------


def test_compare_identical_outputs() -> None:
    ref = _logits()
    m = compare(ref, ref.copy())
    assert m["max_abs"] == m["mean_abs"] == m["p99_abs"] == 0.0
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert m["cosine_min"] == pytest.approx(1.0, abs=1e-12)
    assert m["sqnr_db"] == math.inf
    assert m["top1_agreement"] == 1.0


def test_compare_known_noise_matches_independent_figures() -> None:
    rng = np.random.default_rng(1)
    ref = rng.standard_normal((50, 8))
    noise = 0.01 * rng.standard_normal((50, 8))
    m = compare(ref, ref + noise)

    signal_power = float(np.sum(ref**2))
    noise_power = float(np.sum(noise**2))
    assert m["sqnr_db"] == pytest.approx(10 * math.log10(signal_power / noise_power), rel=1e-9)
    assert 35 < m["sqnr_db"] < 45  # noise at 1% of the signal amplitude: about 40 dB
    assert m["max_abs"] == pytest.approx(np.abs(noise).max(), rel=1e-9)
    assert m["mean_abs"] == pytest.approx(np.abs(noise).mean(), rel=1e-9)
    cos = [
        float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(ref, ref + noise, strict=True)
    ]
    assert m["cosine"] == pytest.approx(np.mean(cos), rel=1e-12)
    assert m["cosine_min"] == pytest.approx(min(cos), rel=1e-12)


def test_compare_flipped_argmax_lowers_top1_by_the_exact_fraction() -> None:
    ref = _logits(n=20)
    m = compare(ref, _flip_argmax(ref, [0, 7, 13]))
    assert m["top1_agreement"] == pytest.approx(17 / 20)


def test_compare_all_zero_outputs_agree_perfectly() -> None:
    zeros = np.zeros((4, 3), dtype=np.float32)
    m = compare(zeros, zeros.copy())
    assert m["cosine"] == m["cosine_min"] == 1.0
    assert m["sqnr_db"] == math.inf
    assert m["max_abs"] == 0.0


def test_compare_zero_row_against_nonzero_row_is_cosine_zero() -> None:
    ref = np.ones((4, 3), dtype=np.float32)
    cand = ref.copy()
    ref[2] = 0.0  # the reference is all-zero in one sample; the candidate is not
    m = compare(ref, cand)
    assert m["cosine_min"] == 0.0
    assert m["cosine"] == pytest.approx(3 / 4)
    assert all(math.isfinite(v) for v in m.values())


def test_compare_zero_reference_against_nonzero_candidate_is_not_nan() -> None:
    m = compare(np.zeros((3, 2)), np.full((3, 2), 0.5))
    assert m["cosine"] == 0.0
    assert m["sqnr_db"] < 0  # all noise, no signal
    assert not math.isnan(m["sqnr_db"])


def test_compare_regression_output_has_no_top1() -> None:
    m = compare(np.linspace(0, 1, 10), np.linspace(0, 1, 10) + 0.1)
    assert "top1_agreement" not in m
    assert m["max_abs"] == pytest.approx(0.1)


def test_compare_refuses_different_shapes() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        compare(np.zeros((2, 3)), np.zeros((3, 2)))


# --- evaluate and Tolerance ---------------------------------------------------------------------


def test_evaluate_passing_result() -> None:
    ref = _logits(n=200)  # enough to show top1_agreement>=0.97 at 95% (125 would do)
    cand = ref + np.float32(1e-4)
    result = evaluate([OUTPUT_NAME], [ref], [cand], Tolerance.for_bits(8))
    assert result
    assert result.failures == []
    assert result.samples == len(ref)
    # no labels: no accuracy; the nonfinite check is always on
    assert {c.bound.metric for c in result.checks} == {"cosine", "top1_agreement", "nonfinite"}
    assert result.accuracy is None
    doc = result.as_json()
    assert doc["passed"] is True
    assert all(c["passed"] for c in doc["checks"])


def test_evaluate_failing_result_reports_what_was_needed() -> None:
    ref = _logits(n=10)
    cand = _flip_argmax(ref, [1, 4, 8])
    result = evaluate([OUTPUT_NAME], [ref], [cand], Tolerance.for_bits(8))
    assert not result
    # top-1 fails outright; on 10 samples nonfinite (none seen) is only inconclusive
    assert [(c.bound.metric, c.verdict) for c in result.failures] == [
        ("top1_agreement", "failed"),
        ("nonfinite", "inconclusive"),
    ]
    failed = next(c for c in result.as_json()["checks"] if not c["passed"])
    assert failed["measured"] == pytest.approx(0.7)
    # 7 of 10: the Wilson interval is [0.397, 0.892]; the tolerance its lower end supports would pass
    assert (failed["interval"]["low"], failed["interval"]["high"]) == pytest.approx(
        (0.3968, 0.8922), abs=1e-4
    )
    assert failed["needed"] == "top1_agreement>=0.39"
    top1 = evaluate([OUTPUT_NAME], [ref], [cand], Tolerance.for_bits(8, failed["needed"])).checks
    assert next(c for c in top1 if c.bound.metric == "top1_agreement").passed
    assert result.as_json()["passed"] is False and result.verdict == "failed"
    assert "FAILED" in result.failures[0].describe()


def test_evaluate_accuracy_drop_with_labels() -> None:
    ref = _logits(n=200)
    labels = ref.argmax(1)  # the reference is right on every sample
    cand = _flip_argmax(ref, list(range(0, 200, 10)))
    result = evaluate([OUTPUT_NAME], [ref], [cand], Tolerance.for_bits(8), labels=labels)
    assert result.accuracy is not None
    assert result.accuracy["reference"] == 1.0
    assert result.accuracy["candidate"] == pytest.approx(0.9)
    assert result.accuracy["drop"] == pytest.approx(0.1)
    assert {c.bound.metric for c in result.failures} == {"top1_agreement", "accuracy_drop"}
    # the drop's interval is paired: 20 samples right in the reference only, none the other way
    drop = result.accuracy["intervals"]["drop"]
    assert drop["method"] == "agresti-min" and drop["discordant"] == [20, 0]
    assert 0.05 < drop["low"] < 0.1 < drop["high"] < 0.15


@pytest.mark.parametrize("measured", [0.12345649, 0.1234565, 0.99999996, 1.2345678e-5])
@pytest.mark.parametrize("metric", ["max_abs", "cosine"])
def test_needed_tolerance_would_really_pass(metric: str, measured: float) -> None:
    """The "needed" bound in the report, given back as --tolerance, lets the check pass."""
    check = Check(OUTPUT_NAME, Bound(metric, 0.0 if metric == "max_abs" else 1.5, explicit=True), measured)
    assert not check.passed
    (needed,) = parse_tolerance(check.as_json()["needed"])
    assert needed.holds(measured)


def test_explicit_accuracy_drop_without_labels_is_a_config_error() -> None:
    ref = _logits()
    tolerance = Tolerance.for_bits(8, "accuracy_drop<=0.01")
    with pytest.raises(ConfigError, match="no labels"):
        evaluate([OUTPUT_NAME], [ref], [ref], tolerance)


def test_explicit_top1_on_a_regression_output_is_a_config_error() -> None:
    y = np.linspace(-1, 1, 10, dtype=np.float32)
    with pytest.raises(ConfigError, match="top1_agreement"):
        evaluate(["y"], [y], [y], Tolerance.for_bits(8, "top1_agreement>=0.99"))


def test_default_bounds_that_do_not_apply_are_skipped() -> None:
    y = np.linspace(-1, 1, 100, dtype=np.float32)
    result = evaluate(["y"], [y], [y + 0.001], Tolerance.for_bits(8), labels=np.arange(100))
    assert [c.bound.metric for c in result.checks] == ["cosine", "nonfinite"]
    assert result.accuracy is None  # a 1-D output is not class scores
    assert result


def test_output_scoped_bound_applies_to_that_output_only() -> None:
    logits = _logits(n=100)  # 72 clean samples show a max bound at 95%
    score = np.linspace(0, 1, 100, dtype=np.float32)
    result = evaluate(
        [OUTPUT_NAME, "score"],
        [logits, score],
        [logits + 0.5, score + 0.01],  # logits far off in max_abs, score close
        Tolerance(parse_tolerance("score:max_abs<=0.05")),
    )
    assert [(c.output, c.bound.metric) for c in result.checks] == [
        ("score", "max_abs"),
        (OUTPUT_NAME, "nonfinite"),  # always on, for every output
        ("score", "nonfinite"),
    ]
    assert result
    failing = evaluate(
        [OUTPUT_NAME, "score"],
        [logits, score],
        [logits, score + 0.1],
        Tolerance(parse_tolerance("score:max_abs<=0.05")),
    )
    assert not failing
    assert failing.failures[0].output == "score"


def test_output_scoped_bound_can_loosen_the_default_for_that_output() -> None:
    ref = _logits(n=200)
    cand = ref.copy()
    cand[np.arange(len(ref)), ref.argmin(1)] -= 3.0  # lower each row's loser: same winners, cosine ~0.989
    metrics = compare(ref, cand)
    assert 0.9 < metrics["cosine"] < 0.99 and metrics["top1_agreement"] == 1.0
    assert evaluate([OUTPUT_NAME], [ref], [cand], Tolerance.for_bits(8, f"{OUTPUT_NAME}:cosine>=0.9"))


def test_unscoped_bound_applies_to_every_output() -> None:
    a, b = _logits(n=100), np.linspace(0, 1, 100)
    result = evaluate(["a", "b"], [a, b], [a, b + 0.2], Tolerance(parse_tolerance("max_abs<=0.1")))
    max_abs = [(c.output, c.passed) for c in result.checks if c.bound.metric == "max_abs"]
    assert max_abs == [("a", True), ("b", False)]


def test_bound_on_an_unknown_output_is_a_config_error() -> None:
    ref = _logits()
    with pytest.raises(ConfigError) as err:
        evaluate([OUTPUT_NAME], [ref], [ref], Tolerance(parse_tolerance("probs:max_abs<=0.1")))
    assert "'probs'" in str(err.value)
    assert OUTPUT_NAME in str(err.value)


def test_nan_in_the_candidate_never_passes() -> None:
    ref = _logits()
    cand = ref.copy()
    cand[3, 1] = np.nan
    result = evaluate([OUTPUT_NAME], [ref], [cand], Tolerance(parse_tolerance("max_abs<=10,cosine>=0.5")))
    assert not result
    assert {c.bound.metric for c in result.failures} == {"max_abs", "cosine", "nonfinite"}


def test_validation_result_truthiness_follows_checks() -> None:
    bound = Bound("max_abs", 0.1)
    ok, bad = Check("y", bound, 0.05), Check("y", bound, 0.5)
    assert ValidationResult(samples=1, outputs={}, checks=(ok,))
    assert not ValidationResult(samples=1, outputs={}, checks=(ok, bad))
    assert ValidationResult(samples=1, outputs={}, checks=())  # nothing to check: nothing failed


def test_evaluate_refuses_mismatched_lengths() -> None:
    ref = _logits()
    with pytest.raises(ValueError):
        evaluate(["a", "b"], [ref], [ref], Tolerance(()))


# --- real onnxruntime sessions ------------------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("validate")
    return {
        "dynamic": write_cnn_mlp(folder / "dynamic.onnx"),
        "batch4": write_cnn_mlp(folder / "batch4.onnx", batch=4),
    }


def test_interleaved_latency_with_two_real_sessions(models: dict[str, Path]) -> None:
    x = {INPUT_NAME: images(1)}
    sessions = {name: make_session(path).inner for name, path in models.items()}
    feeds = {"dynamic": x, "batch4": {INPUT_NAME: images(4)}}
    calls: list[str] = []

    def runner(name: str):
        def run() -> None:
            calls.append(name)
            sessions[name].run(None, feeds[name])

        return run

    lat = interleaved_latency({name: runner(name) for name in sessions}, repeats=12, warmup=2)
    assert set(lat) == {"dynamic", "batch4"}
    for stats in lat.values():
        assert stats.runs == 12
        assert 0 < stats.p50_ms <= stats.p90_ms
        assert stats.mean_ms > 0
        assert set(stats.to_json()) == {"p50_ms", "p90_ms", "mean_ms", "runs"}
    assert calls.count("dynamic") == calls.count("batch4") == 12 + 2
    timed = calls[4:]  # after the warm-up rounds, the order is rotated every round
    rounds = [tuple(timed[i : i + 2]) for i in range(0, len(timed), 2)]
    assert set(rounds) == {("dynamic", "batch4"), ("batch4", "dynamic")}


def test_tensorrt_providers_fall_back_to_cpu_here(models: dict[str, Path]) -> None:
    import onnxruntime as ort

    if "TensorrtExecutionProvider" in ort.get_available_providers():
        pytest.skip("TensorRT is installed here; there is nothing to fall back from")
    inputs = [ModelInput(INPUT_NAME, (None, 1, 8, 8), "float32")]
    session = make_session(models["dynamic"], TARGETS.get("tensorrt").bind().providers(inputs))
    assert session.wanted == "TensorrtExecutionProvider"
    assert session.used == "CPUExecutionProvider"
    assert session.fell_back
    x = images(3)
    np.testing.assert_allclose(session.run(Dataset("x", {INPUT_NAME: x}))[0], torch_logits(x), atol=1e-5)


def test_cpu_session_does_not_fall_back(models: dict[str, Path]) -> None:
    session = make_session(models["dynamic"])
    assert session.used == session.wanted == "CPUExecutionProvider"
    assert not session.fell_back
    assert session.output_names == [OUTPUT_NAME]


def test_fixed_batch_model_runs_any_number_of_samples(models: dict[str, Path]) -> None:
    session = make_session(models["batch4"])
    assert session.inner.get_inputs()[0].shape[0] == 4
    x = images(10, seed=3)
    (batched,) = session.run(Dataset("ten samples", {INPUT_NAME: x}))
    assert batched.shape == (10, 5)

    one_by_one = np.stack(
        [
            session.inner.run(None, {INPUT_NAME: np.repeat(x[i : i + 1], 4, axis=0)})[0][0]
            for i in range(len(x))
        ]
    )
    np.testing.assert_allclose(batched, one_by_one, rtol=0, atol=1e-6)
    np.testing.assert_allclose(batched, torch_logits(x), atol=1e-5)


def test_dynamic_batch_model_runs_in_chunks(models: dict[str, Path]) -> None:
    x = images(10, seed=4)
    (out,) = make_session(models["dynamic"]).run(Dataset("ten samples", {INPUT_NAME: x}), batch=3)
    np.testing.assert_allclose(out, torch_logits(x), atol=1e-5)
