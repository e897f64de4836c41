"""The manifest's `command` (`RunConfig.to_argv`) stays byte-identical for the same run: these strings
were captured from the hand-written to_argv before the settings were composed (branch settings3)."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from qconvert.settings import DataOptions, RunConfig
from qconvert.types import InputSpec

CASES = {
    "default": (RunConfig(), "qconvert export --bits 8 --target cpu --opset 18 -o out/dir"),
    "everything": (
        RunConfig(
            source="model.py:build",
            bits=4,
            mode="weight-only",
            calibration="cal.npz",
            data="held out.npz",
            samples=32,
            tolerance="cosine>=0.9,logits:max_abs<=0.5",
            confidence=0.99,
            exclude=("op:Conv", "name:a*"),
            include=("re:.*fc.*",),
            block_size=64,
            weight_algorithm="hqq",
            data_options=DataOptions(
                image_size=(224, 192),
                mean=(0.485, 0.456, 0.406),
                std=(0.229,),
                layout="nhwc",
                tokenizer="tok/",
                max_length=16,
                padding="longest",
                truncation=False,
            ),
            task="feature-extraction",
            latency_batch=4,
            calibration_method="entropy",
            placement="compute",
            target_options=(("format", "qdq"), ("device", "GPU")),
            recover=(),
            auto=True,
            auto_budget=3,
            auto_seconds=120.5,
            inputs=(InputSpec("x", (1, 3, 32, 32)), InputSpec("ids", (1, 8), "int64")),
            opset=21,
            target="openvino",
            force=True,
            latency_repeats=7,
        ),
        "qconvert export model.py:build --bits 4 --target openvino --mode weight-only --calibration cal.npz "
        "--data 'held out.npz' --samples 32 --tolerance 'cosine>=0.9,logits:max_abs<=0.5' --confidence 0.99 "
        "--exclude op:Conv --exclude 'name:a*' --include 're:.*fc.*' --block-size 64 --algorithm hqq "
        "--image-size 224x192 --mean 0.485,0.456,0.406 --std 0.229 --layout nhwc --task feature-extraction "
        "--tokenizer tok/ --max-length 16 --padding longest --no-truncation --latency-batch 4 "
        "--calibration-method entropy --placement compute --target-option format=qdq --target-option "
        "device=GPU --recover none --auto --auto-budget 3 --auto-seconds 120.5 --input x:1x3x32x32:float32 "
        "--input ids:1x8:int64 --opset 21 -o out/dir",
    ),
    "recover16": (
        RunConfig(
            bits=16,
            target="cuda",
            recover=("gptq", "bias_correction"),
            auto=True,
            confidence=0.975,
            data_options=DataOptions(mean=(0.5,)),
            sensitivity_samples=3,
        ),
        "qconvert export --bits 16 --target cuda --confidence 0.975 --mean 0.5 --recover gptq,bias_correction "
        "--auto --opset 18 -o out/dir",
    ),
    "bits4defaults": (
        RunConfig(source="pkg.mod:fn", bits=4, auto=True, auto_seconds=600.0),
        "qconvert export pkg.mod:fn --bits 4 --target cpu --block-size 32 --algorithm rtn --auto --opset 18 "
        "-o out/dir",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_to_argv_is_byte_identical_to_before(name: str) -> None:
    config, command = CASES[name]
    assert shlex.join(config.to_argv(Path("out/dir"))) == command
