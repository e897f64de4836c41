"""Settings parsing and validation: --input, --tolerance, per-bit defaults and RunConfig."""

from __future__ import annotations

import dataclasses

import pytest

from qconvert.config import (
    DEFAULT_TOLERANCES,
    METRIC_BOUNDS,
    Bound,
    InputSpec,
    RunConfig,
    Tolerance,
    parse_tolerance,
)
from qconvert.errors import ConfigError

# --- --input NAME:SHAPE[:DTYPE] -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("pixels:1x3x32x32", InputSpec("pixels", (1, 3, 32, 32), "float32")),
        ("pixels:1x3x32x32:float32", InputSpec("pixels", (1, 3, 32, 32), "float32")),
        ("x:2x16:fp16", InputSpec("x", (2, 16), "float16")),
        ("input_ids:1,128:int64", InputSpec("input_ids", (1, 128), "int64")),
        ("ids:[1,128]:LONG", InputSpec("ids", (1, 128), "int64")),
        ("mask:1x128:int", InputSpec("mask", (1, 128), "int32")),
        ("flag:4:bool", InputSpec("flag", (4,), "bool")),
        # TensorFlow-style names carry an output index (tf2onnx keeps them)
        ("image:0:1x3x224x224", InputSpec("image:0", (1, 3, 224, 224), "float32")),
        ("serving_default_x:0:1x8:fp16", InputSpec("serving_default_x:0", (1, 8), "float16")),
        ("x:0:4", InputSpec("x:0", (4,), "float32")),
    ],
)
def test_input_spec_parses(text: str, expected: InputSpec) -> None:
    assert InputSpec.parse(text) == expected


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("pixels", "is not NAME:SHAPE"),
        (":1x3x32x32", "is not NAME:SHAPE"),
        ("a:1x3:float32:extra", "is not NAME:SHAPE"),
        ("pixels:", "must be positive integers"),
        ("pixels:1x0x32", "must be positive integers"),
        ("pixels:1x-3", "must be positive integers"),
        ("pixels:1xbx32", "must be positive integers"),
        ("pixels:1x3:complex64", "unknown dtype 'complex64'"),
        ("pixels:1x3:", "unknown dtype"),
    ],
)
def test_input_spec_rejects(text: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as err:
        InputSpec.parse(text)
    assert "--input" in str(err.value)


# --- --tolerance ------------------------------------------------------------------------------------


def test_parse_tolerance_items() -> None:
    bounds = parse_tolerance("top1_agreement>=0.99, logits:max_abs<=0.5,sqnr_db >= 20,mean_abs<=1e-3,")
    assert bounds == (
        Bound("top1_agreement", 0.99, output=None, explicit=True),
        Bound("max_abs", 0.5, output="logits", explicit=True),
        Bound("sqnr_db", 20.0, output=None, explicit=True),
        Bound("mean_abs", 0.001, output=None, explicit=True),
    )
    assert [b.kind for b in bounds] == ["min", "max", "min", "max"]
    assert parse_tolerance("") == ()


def test_every_metric_parses_in_its_own_direction() -> None:
    for metric, kind in METRIC_BOUNDS.items():
        op = ">=" if kind == "min" else "<="
        (bound,) = parse_tolerance(f"{metric}{op}0.5")
        assert bound.describe() == f"{metric}{op}0.5"


@pytest.mark.parametrize(
    ("spec", "complaint"),
    [
        ("max_abs>=0.5", "max_abs is bounded with <="),
        ("cosine<=0.9", "cosine is bounded with >="),
        ("accuracy_drop>=0.01", "accuracy_drop is bounded with <="),
        ("latency<=3", "unknown metric 'latency'"),
        ("cosine>=abc", "is not \\[OUTPUT:\\]METRIC"),
        ("cosine>=0.9.9", "is not a number"),
        ("cosine>=-", "is not a number"),
        ("cosine=0.9", "is not \\[OUTPUT:\\]METRIC"),
        ("cosine>0.9", "is not \\[OUTPUT:\\]METRIC"),
        ("top1_agreement>=0.99,max_abs", "'max_abs'"),
    ],
)
def test_parse_tolerance_rejects(spec: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        parse_tolerance(spec)


def test_bound_holds_in_its_direction() -> None:
    at_least, at_most = Bound("cosine", 0.99), Bound("max_abs", 0.5)
    assert at_least.holds(0.99) and at_least.holds(1.0) and not at_least.holds(0.98)
    assert at_most.holds(0.5) and at_most.holds(0.0) and not at_most.holds(0.51)


# --- per-bit defaults ---------------------------------------------------------------------------


def _by_metric(tolerance: Tolerance) -> dict[str, list[Bound]]:
    out: dict[str, list[Bound]] = {}
    for b in tolerance.bounds:
        out.setdefault(b.metric, []).append(b)
    return out


@pytest.mark.parametrize("bits", [16, 8, 4])
def test_defaults_per_bit_width_are_not_explicit(bits: int) -> None:
    tolerance = Tolerance.for_bits(bits)
    assert {b.metric: b.value for b in tolerance.bounds} == DEFAULT_TOLERANCES[bits]
    assert not any(b.explicit or b.output for b in tolerance.bounds)


def test_defaults_loosen_as_bits_drop() -> None:
    for metric, kind in METRIC_BOUNDS.items():
        values = [DEFAULT_TOLERANCES[bits].get(metric) for bits in (16, 8, 4)]
        if None in values:
            continue
        assert values == (sorted(values, reverse=True) if kind == "min" else sorted(values)), metric


def test_given_bound_overrides_that_metrics_default_only() -> None:
    bounds = _by_metric(Tolerance.for_bits(8, "cosine>=0.999"))
    assert [(b.value, b.explicit) for b in bounds["cosine"]] == [(0.999, True)]
    assert [b.value for b in bounds["top1_agreement"]] == [DEFAULT_TOLERANCES[8]["top1_agreement"]]
    assert [b.value for b in bounds["accuracy_drop"]] == [DEFAULT_TOLERANCES[8]["accuracy_drop"]]


def test_output_scoped_bound_keeps_the_default_for_other_outputs() -> None:
    bounds = _by_metric(Tolerance.for_bits(8, "logits:cosine>=0.5"))
    assert {(b.output, b.value) for b in bounds["cosine"]} == {
        (None, DEFAULT_TOLERANCES[8]["cosine"]),
        ("logits", 0.5),
    }


def test_new_metric_is_added_next_to_the_defaults() -> None:
    bounds = _by_metric(Tolerance.for_bits(4, "max_abs<=0.25"))
    assert set(bounds) == {*DEFAULT_TOLERANCES[4], "max_abs"}
    assert bounds["max_abs"][0].explicit


# --- RunConfig ----------------------------------------------------------------------------------------


def test_run_config_defaults_are_valid_and_frozen() -> None:
    config = RunConfig()
    assert (config.bits, config.target, config.mode, config.opset) == (8, "cpu", None, 18)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.bits = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "flag"),
    [
        ({"bits": 7}, "--bits 7"),
        ({"bits": 32}, "--bits 32"),
        ({"mode": "fast"}, "--mode 'fast'"),
        ({"opset": 6}, "--opset 6"),
        ({"opset": 24}, "--opset 24"),
        ({"samples": 0}, "--samples"),
        ({"samples": -5}, "--samples"),
        ({"calibration_method": "kl"}, "--calibration-method 'kl'"),
        ({"tolerance": "max_abs>=1"}, "--tolerance"),
        ({"latency_repeats": 0}, "latency_repeats"),
    ],
)
def test_run_config_rejects(changes: dict[str, object], flag: str) -> None:
    with pytest.raises(ConfigError) as err:
        RunConfig(**changes)  # type: ignore[arg-type]
    assert flag in str(err.value)


@pytest.mark.parametrize(
    "changes",
    [
        {"bits": 16},
        {"bits": 4, "mode": "weight-only"},
        {"mode": "dynamic"},
        {"opset": 7},
        {"opset": 23},
        {"samples": 1},
        {"calibration_method": "percentile"},
        {"tolerance": "logits:max_abs<=0.5"},
    ],
)
def test_run_config_accepts(changes: dict[str, object]) -> None:
    config = RunConfig(**changes)  # type: ignore[arg-type]
    for key, value in changes.items():
        assert getattr(config, key) == value


@pytest.mark.parametrize("spec", ["collapse_rate<=0.1", "speedup>=1", "cosine>=0.9,task_drop<=0.01"])
def test_export_refuses_bounds_only_validate_measures(spec: str) -> None:
    with pytest.raises(ConfigError, match="measured by `qconvert validate`"):
        RunConfig(tolerance=spec)
