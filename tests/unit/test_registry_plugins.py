"""Third-party targets, quantizers and recovery steps register through entry points (groups
`qconvert.targets`, `qconvert.quantizers`, `qconvert.recoveries`) and reach the registries, the CLI's
choices and the settings' checks. The plugin here is a real distribution: a package and its
.dist-info on sys.path of a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qconvert.errors import ConfigError
from qconvert.quantize import QUANTIZERS, Method, as_method
from qconvert.registry import Registry, load_plugins

REPO = Path(__file__).resolve().parents[2]

PLUGIN = """
from dataclasses import replace

from qconvert.quantize.dynamic import quantize_dynamic_int8
from qconvert.recover import Recovery, StepResult
from qconvert.targets.base import Provider, Target
from qconvert.targets.cpu import CPU


class EdgeTarget(Target):
    def quantize_config(self, bits, mode, calibration_method, opts):
        # the plugin's own quantizer (mode "testcopy"), on the cpu target's dynamic int8 settings
        return replace(CPU.bind().quantize_config(bits, "dynamic", calibration_method), mode="testcopy")

    def providers(self, inputs, opts):
        return [Provider("CPUExecutionProvider")]


EDGE = EdgeTarget(
    name="testedge",
    description="a plugin target: the CPU provider, dynamic int8 through the plugin's quantizer",
    modes={8: ("dynamic",)},
)


def quantize_copy(src, dest, qc, calibration, on_batch=None):
    return quantize_dynamic_int8(src, dest, replace(qc, mode="dynamic"), calibration, on_batch)


# a pre-quantization step that leaves the graph as it is and says how many nodes it saw
class LookOnly(Recovery):
    name = "testlook"
    phase = "pre"
    needs_calibration = False
    formats = frozenset({"qdq", "qoperator"})

    def run(self, fp32, quantized, inp):
        return StepResult(fp32, changed=False, notes=(f"saw {len(fp32.graph.node)} nodes",))
"""


def _install(site: Path, extra: str = "") -> None:
    (site / "qconvert_testplugin").mkdir(parents=True)
    (site / "qconvert_testplugin" / "__init__.py").write_text(textwrap.dedent(PLUGIN))
    info = site / "qconvert_testplugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qconvert-testplugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[qconvert.targets]\ntestedge = qconvert_testplugin:EDGE\n"
        "[qconvert.quantizers]\ntestcopy = qconvert_testplugin:quantize_copy\n" + extra + "\n"
        "[qconvert.recoveries]\ntestlook = qconvert_testplugin:LookOnly\n"
    )


def _python(site: Path, code: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)]), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_plugin_target_and_quantizer_reach_the_registries_and_the_cli(tmp_path: Path) -> None:
    site = tmp_path / "site"
    # a broken entry point, and one that tries to replace a built-in
    _install(site, "badone = qconvert_testplugin:no_such_name\nstatic = qconvert_testplugin:quantize_copy\n")
    code = (
        "import json\n"
        "from qconvert.targets import TARGETS\n"
        "from qconvert.quantize import QUANTIZERS\n"
        "print(json.dumps({'targets': TARGETS.names(), 'quantizers': QUANTIZERS.names(),"
        " 'desc': TARGETS.get('testedge').description,"
        " 'static_kept': QUANTIZERS.get('static').supports_sensitivity}))"
    )
    proc = _python(site, code)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert "testedge" in got["targets"] and "cpu" in got["targets"]
    assert "testcopy" in got["quantizers"] and "static" in got["quantizers"]
    assert "badone" not in got["quantizers"]  # a broken plugin is skipped, the rest still load
    assert got["static_kept"] is True  # a plugin cannot replace a built-in
    help_proc = _python(site, "from qconvert.cli import main; main()", "export", "--help")
    assert help_proc.returncode == 0, help_proc.stderr
    assert "testedge" in help_proc.stdout  # --target choices come from the registry
    assert "--mode [static|dynamic|weight-only|fp16|bf16|testcopy]" in help_proc.stdout  # and --mode's
    assert "testlook" in help_proc.stdout  # the --recover help names every registered step


def test_plugin_mode_and_recovery_step_are_valid_choices(tmp_path: Path) -> None:
    """A plugin quantizer's mode is a valid --mode and a plugin step a valid --recover value: taken
    by the settings and the command line, checked by the plan stage (the help: the test above)."""
    site = tmp_path / "site"
    _install(site)
    code = (
        "import contextlib, json\n"
        "from qconvert import choices\n"
        "from qconvert.settings import RunConfig, SweepConfig\n"
        "from qconvert.errors import ConfigError\n"
        "from qconvert.stages._shared import no_progress\n"
        "from qconvert.stages.context import ExportContext\n"
        "from qconvert.stages.plan import PlanQuantization\n"
        "RunConfig(mode='testcopy'); SweepConfig(modes=('testcopy',))\n"
        "with contextlib.ExitStack() as stack:\n"
        "    PlanQuantization().run(ExportContext(RunConfig(recover=('testlook',)), no_progress, stack))\n"
        "    try:\n"
        "        PlanQuantization().run(ExportContext(RunConfig(recover=('nosuch',)), no_progress, stack))\n"
        "    except ConfigError as e:\n"
        "        refused = str(e)\n"
        "print(json.dumps({'modes': choices.modes(), 'steps': choices.recovery_steps(), 'refused': refused}))"
    )
    proc = _python(site, code)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["modes"][:5] == ["static", "dynamic", "weight-only", "fp16", "bf16"]
    assert "testcopy" in got["modes"] and "implicit" not in got["modes"]  # implicit: a target option
    assert "testlook" in got["steps"] and "testlook" in got["refused"]
    # the command line takes the plugin's mode; the cpu target then refuses it, naming its own
    cli = "from qconvert.cli import main; main()"
    refused = _python(site, cli, "export", "--mode", "testcopy", "-o", str(tmp_path / "out"))
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "--mode testcopy is not supported by --target cpu" in " ".join(refused.stderr.split())
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_plugin_target_exports_end_to_end(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _install(site)
    out = tmp_path / "out"
    argv = ("export", "--target", "testedge", "--recover", "testlook", "-o", str(out))
    proc = _python(site, "from qconvert.cli import main; main()", *argv)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["target"] == "testedge" and report["mode"] == "testcopy"
    assert report["ops"]["model"].get("DynamicQuantizeLinear", 0) > 0  # the plugin quantizer ran
    (step,) = report["recovery"]  # the plugin step ran before quantization
    assert step["name"] == "testlook" and step["applied"] and step["notes"][0].startswith("saw ")


def test_a_group_without_plugins_adds_nothing() -> None:
    registry: Registry[str] = Registry("thing", "--thing")
    registry.register("cpu")("built-in")
    assert load_plugins(registry, "qconvert.no-such-group") == []
    assert registry.get("cpu") == "built-in"
    with pytest.raises(ConfigError, match=r"--thing 'gpu' is not a known thing\. Valid choices: cpu"):
        registry.get("gpu")


def test_quantizers_declare_capabilities_as_data() -> None:
    static, dynamic, fp16 = (QUANTIZERS.get(m) for m in ("static", "dynamic", "fp16"))
    assert static.needs_calibration and static.supports_sensitivity
    assert static.honours_exclude and static.honours_include
    assert dynamic.honours_include and not dynamic.supports_sensitivity
    assert fp16.honours_exclude and not fp16.honours_include
    assert QUANTIZERS.get("implicit").needs_calibration
    bare = as_method(lambda src, dest, qc, calibration, on_batch=None: dest)
    assert isinstance(bare, Method) and not bare.honours_exclude
    with pytest.raises(TypeError):
        as_method(42)


def test_a_recovery_plugin_is_a_step_or_its_class() -> None:
    from qconvert.recover import RECOVERY, as_recovery

    step = RECOVERY.get("bias_correction")
    assert as_recovery(step) is step
    assert type(as_recovery(type(step))) is type(step)  # a class is made with no arguments
    for bad in (42, type("Unphased", (type(step),), {"phase": "during"})):
        with pytest.raises(TypeError):
            as_recovery(bad)


def test_a_registry_lists_names_sorted_or_in_registration_order() -> None:
    for by_name, expected in ((True, ["a", "b"]), (False, ["b", "a"])):
        registry: Registry[int] = Registry("thing", "--thing", by_name=by_name)
        registry.register("b")(1)
        registry.register("a")(2)
        assert registry.names() == expected and [n for n, _ in registry] == expected
