"""Composed settings: every flag field has an option in each command that takes it, and a setting
round-trips settings -> to_argv -> the command's own parser -> equal settings; flat keywords and reads
(the public RunConfig/SweepConfig/ValidateConfig API) reach the group that holds the field."""

from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path
from typing import Any

import pytest
import typer

from qconvert import RunConfig, ValidateConfig
from qconvert.cli import app
from qconvert.cli.benchmark_cmd import benchmark
from qconvert.cli.export_cmd import export
from qconvert.cli.options import settings_from
from qconvert.cli.sweep_cmd import sweep
from qconvert.cli.validate_cmd import validate
from qconvert.errors import ConfigError
from qconvert.settings import (
    BenchmarkSettings,
    ExportSettings,
    SweepConfig,
    SweepSettings,
    ValidateSettings,
    api_fields,
    flag_fields,
    to_argv,
)
from qconvert.types import InputSpec

# A non-default value for every flag field (with what it needs beside it). A new flag fails
# test_every_flag_has_a_sample until it has one here.
SAMPLES: dict[str, dict[str, Any]] = {
    "source": {"source": "model.py:build"},
    "inputs": {"inputs": (InputSpec("x", (1, 3, 8, 8)), InputSpec("ids", (1, 4), "int64"))},
    "task": {"task": "feature-extraction"},
    "opset": {"opset": 17},
    "calibration": {"calibration": "cal.npz"},
    "data": {"data": "held out.npz"},
    "samples": {"samples": 5},
    "image_size": {"image_size": (32, 24)},
    "mean": {"mean": (0.5, 0.25, 0.125)},
    "std": {"std": (0.2,)},
    "layout": {"layout": "nhwc"},
    "tokenizer": {"tokenizer": "tok"},
    "max_length": {"max_length": 9},
    "padding": {"padding": "longest"},
    "truncation": {"truncation": False},
    "bits": {"bits": 16},
    "mode": {"mode": "static"},
    "calibration_method": {"calibration_method": "entropy"},
    "placement": {"placement": "inputs"},
    "exclude": {"exclude": ("op:Conv", "name:a*")},
    "include": {"include": ("re:.*fc.*",)},
    "block_size": {"block_size": 64, "bits": 4},
    "weight_algorithm": {"weight_algorithm": "hqq", "bits": 4},
    "recover": {"recover": ("gptq", "bias_correction")},
    "target": {"target": "tensorrt"},
    "target_options": {"target_options": (("device", "GPU"), ("format", "qdq"))},
    "tolerance": {"tolerance": "cosine>=0.9,logits:max_abs<=0.5"},
    "confidence": {"confidence": 0.99},
    "latency_batch": {"latency_batch": 3},
    "auto": {"auto": True},
    "auto_budget": {"auto": True, "auto_budget": 2},
    "auto_seconds": {"auto": True, "auto_seconds": 30.5},
    "out_dir": {"out_dir": Path("some/out")},
    "force": {"force": True},
    # sweep's own
    "modes": {"modes": ("static", "dynamic")},
    "workers": {"workers": 2},
    "executor": {"executor": "ray"},
    "ray_address": {"executor": "ray", "ray_address": "host:6379"},
    # validate's
    "candidate": {"candidate": "out/model.onnx"},
    "reference": {"reference": "ref.onnx"},
    "calibration_data": {"calibration_data": "cal.npz"},
    "metric": {"metric": "metric.py:score"},
    "require_speedup": {"require_speedup": True},
    "probes": {"probes": ("collapse",)},
    "probe_options": {"probes": ("collapse",), "probe_options": (("token", "5"), ("pad", "0"))},
    "json_out": {"json_out": Path("r.json")},
    "junit_out": {"junit_out": Path("r.xml")},
    "html_out": {"html_out": Path("r.html")},
    # benchmark's
    "model": {"model": Path("a.onnx")},
    "vs": {"vs": Path("b.onnx")},
    "batch": {"batch": 4},
    "repeats": {"repeats": 7},
    "threads": {"threads": 2},
}
# Per command: the sample that is not a change there (it is the base the others start from), and the
# export flags a sweep does not offer (it varies --bits and --mode itself; the rest are export's alone).
BASE: dict[str, dict[str, Any]] = {
    "export": {},
    "sweep": {},
    "validate": {"candidate": "out"},
    "benchmark": {"model": Path("a.onnx")},
}
SWEEP_LEAVES_OUT = {
    "mode",
    "placement",
    "exclude",
    "include",
    "block_size",
    "weight_algorithm",
    "recover",
    "auto",
    "auto_budget",
    "auto_seconds",
}
# where a command's field of the same name takes another kind of value
OWN_SAMPLES = {("sweep", "bits"): {"bits": (8, 4)}}
COMMANDS: dict[str, tuple[type, Any]] = {
    "export": (ExportSettings, export),
    "sweep": (SweepSettings, sweep),
    "validate": (ValidateSettings, validate),
    "benchmark": (BenchmarkSettings, benchmark),
}


def _flag_names(settings: Any) -> list[str]:
    return [f.name for f, _, _ in flag_fields(settings)]


def _parsed(command: str, argv: list[str]) -> Any:
    """What the command's own parser makes of `argv` (the command is not run)."""
    cls, fn = COMMANDS[command]
    click_command = typer.main.get_command(app).commands[command]  # type: ignore[attr-defined]
    assert argv[:2] == ["qconvert", command]
    ctx = click_command.make_context(command, list(argv[2:]))
    return settings_from(cls, {o.field: ctx.params[o.name] for o in fn.opts if o.field is not None})


def _argv(command: str, settings: Any) -> list[str]:
    if command == "export":
        return settings.to_argv(settings.out_dir or Path("out"))
    return to_argv(settings, command)


def _cases() -> list[tuple[str, str]]:
    cases = []
    for command, (cls, _) in COMMANDS.items():
        for name in _flag_names(cls(**BASE[command])):
            if name in BASE[command] or (command == "sweep" and name in SWEEP_LEAVES_OUT):
                continue
            cases.append((command, name))
    return cases


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_flag_has_a_sample_and_an_option(command: str) -> None:
    cls, fn = COMMANDS[command]
    names = set(_flag_names(cls(**BASE[command])))
    missing = names - set(SAMPLES)
    assert not missing, f"add a non-default sample value for {sorted(missing)} to SAMPLES"
    offered = {o.field for o in fn.opts if o.field is not None}
    expected = names - (SWEEP_LEAVES_OUT if command == "sweep" else set())
    assert expected == offered, (
        f"fields without an option: {sorted(expected - offered)}; options without a field: {sorted(offered - expected)}"
    )


@pytest.mark.parametrize(("command", "name"), _cases())
def test_a_setting_round_trips_through_the_command_line(command: str, name: str) -> None:
    cls, _ = COMMANDS[command]
    base = cls(**BASE[command])
    changed = cls(**BASE[command], **OWN_SAMPLES.get((command, name), SAMPLES[name]))
    assert changed != base
    argv = _argv(command, changed)
    if name == "force" and command != "validate":
        assert "--force" not in argv  # the manifest's command never replaces a folder by itself
        return
    if command == "export" and changed.out_dir is None:
        changed = changed.evolve(out_dir=Path("out"))  # export's command always names its folder
    assert _parsed(command, argv) == changed, argv


def test_the_python_api_only_fields_are_the_known_ones() -> None:
    """Settings with no flag: a new one is a deliberate choice (say so in ARCHITECTURE.md)."""
    assert sorted(api_fields(ExportSettings())) == [
        "latency_repeats",
        "sensitivity_isolated",
        "sensitivity_samples",
    ]
    assert sorted(api_fields(ValidateSettings(candidate="x"))) == [
        "latency_batch",
        "latency_repeats",
        "settings_dir",
    ]


# --- the public, flat API ------------------------------------------------------------------------------


def test_flat_keywords_reach_their_groups_and_flat_reads_come_back() -> None:
    config = RunConfig(source="m.py:build", bits=4, target="tensorrt", mean=(0.5,), out_dir="out")
    assert config.quantization.bits == 4 and config.bits == 4
    assert config.hardware.target == "tensorrt" and config.target == "tensorrt"
    assert config.datasets.data_options.mean == (0.5,)
    assert config.out_dir == Path("out")  # a str path becomes a Path, as before
    assert dataclasses.replace(config, bits=16).quantization.bits == 16  # replace() takes flat names too
    assert config.evolve(bits=16, force=True) == dataclasses.replace(config, bits=16, force=True)
    with pytest.raises(TypeError, match="bitz"):
        RunConfig(bitz=4)
    with pytest.raises(AttributeError, match="bitz"):
        _ = config.bitz


def test_each_group_checks_its_own_fields() -> None:
    with pytest.raises(ConfigError, match="--samples must be at least 1"):
        RunConfig(samples=0)
    with pytest.raises(ConfigError, match="--block-size and --algorithm apply to --bits 4"):
        RunConfig(block_size=64)
    with pytest.raises(ConfigError, match="measured by `qconvert validate`"):
        RunConfig(tolerance="task_drop<=0.01")  # a check across groups (tolerance x bits)
    with pytest.raises(ConfigError, match="--padding"):
        RunConfig(padding="both")


def test_a_sweep_shares_the_export_groups_and_a_trial_is_replace_of_them() -> None:
    sweep_config = SweepConfig(source="m.py:build", bits=(8, 4), calibration="c.npz", target="cpu", workers=2)
    assert sweep_config.bits == (8, 4)  # the sweep's own field shadows the base's
    assert sweep_config.base.source == "m.py:build" and sweep_config.calibration == "c.npz"
    assert sweep_config.base.calibration_method == "minmax"  # a sweep's default, as before
    base = sweep_config.base
    trial = dataclasses.replace(
        base, quantization=dataclasses.replace(base.quantization, bits=4, mode="weight-only")
    )
    assert trial.datasets is base.datasets and trial.model is base.model  # shared, not copied
    assert to_argv(sweep_config, "sweep")[:4] == ["qconvert", "sweep", "m.py:build", "--target"]


def test_settings_survive_pickling() -> None:
    """Sweep trials go to worker processes: a composed object must pickle (its flat reads must not
    recurse while it is rebuilt)."""
    config = RunConfig(bits=16, exclude=("op:Conv",))
    assert pickle.loads(pickle.dumps(config)) == config
    check = ValidateConfig("out", probes=("collapse",))  # the candidate by position, as before
    assert pickle.loads(pickle.dumps(check)) == check


def test_the_manifest_settings_stay_flat() -> None:
    flat = RunConfig(bits=4, mean=(0.5,)).flat()
    assert flat["bits"] == 4 and flat["data_options"]["mean"] == (0.5,)
    assert "quantization" not in flat and "datasets" not in flat
