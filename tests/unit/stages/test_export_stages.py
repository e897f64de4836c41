"""Export stages on their own: a prefix of EXPORT on a real model, and single stages on a context."""

from __future__ import annotations

import contextlib
from pathlib import Path

import onnx
import pytest

from qconvert.errors import ConfigError
from qconvert.pipeline.exporting import EXPORT
from qconvert.settings import RunConfig
from qconvert.stages._shared import no_progress
from qconvert.stages.base import run_stages
from qconvert.stages.context import ExportContext
from qconvert.stages.plan import PlanQuantization
from qconvert.stages.select import SelectNodes


def _ctx(config: RunConfig, stack: contextlib.ExitStack) -> ExportContext:
    return ExportContext(config, no_progress, stack)


def test_export_order_is_one_tuple_with_recovery_around_quantize() -> None:
    names = [s.name for s in EXPORT]
    assert names.index("recover") + 1 == names.index("quantize") == names.index("correct") - 1
    assert names[0] == "plan" and names[-1] == "write"
    assert len(set(names)) == len(names)


def test_every_stage_needs_only_what_an_earlier_stage_gives() -> None:
    given = {"config", "progress", "stack", "notes"}
    for stage in EXPORT:
        assert set(stage.needs) <= given, (stage.name, set(stage.needs) - given)
        given |= set(stage.gives)


def test_plan_refuses_exclude_where_the_quantizer_ignores_it(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack:
        ctx = _ctx(RunConfig(bits=16, target="cuda", mode="bf16", exclude=("op:Conv",)), stack)
        with pytest.raises(
            ConfigError, match="do not apply to bf16 mode here: --exclude works with static, dynamic, fp16"
        ):
            PlanQuantization().run(ctx)


def test_select_is_skipped_without_selectors() -> None:
    with contextlib.ExitStack() as stack:
        assert SelectNodes().skip(_ctx(RunConfig(), stack))


@pytest.mark.slow
def test_the_stages_up_to_quantize_run_alone_and_roll_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    upto = [s.name for s in EXPORT].index("quantize") + 1
    with contextlib.ExitStack() as stack:
        ctx = _ctx(RunConfig(target="cpu", bits=8, out_dir=out), stack)
        done = run_stages(EXPORT[:upto], ctx, no_progress)
        assert done[-1] == "quantize" and "select" not in done  # no selectors: skipped
        ops = {n.op_type for n in onnx.load(str(ctx.model_path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
        # the built-in conv net has no depthwise convolutions: no family defaults
        assert ctx.recovery == [] and ctx.reference_path.is_file()
    # WriteArtifacts never ran, so the folder was not committed: nothing is left behind
    assert not out.exists() and list(tmp_path.iterdir()) == []
