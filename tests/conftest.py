"""Shared fixtures: small real PyTorch models written to files, calibration data, and helpers.

Every model here is tiny (a few conv/linear layers) and seeded, so a test can build it in well
under a second and export it for real. The model files follow the SOURCE contract: a module with
a factory (`build`) returning an `nn.Module` and, where the test needs it, `example_inputs()`.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

# --- model files ---------------------------------------------------------------------------

TINY_CNN = '''
import torch
from torch import nn


class TinyCNN(nn.Module):
    """[N, 3, 8, 8] -> conv 8 -> conv 8 -> pool -> linear -> [N, 4] class scores."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 8, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(8 * 2 * 2, 4)

    def forward(self, image):
        return self.head(torch.flatten(self.features(image), 1))


def build():
    torch.manual_seed(0)
    return TinyCNN()


def example_inputs():
    return (torch.zeros(1, 3, 8, 8),)
'''

TINY_MLP = '''
import torch
from torch import nn


def build():
    """[N, 12] -> [N, 3]; there is no example_inputs(): callers pass --input."""
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 3))
'''

TWO_INPUTS = '''
import torch
from torch import nn


class TwoInputs(nn.Module):
    """image [N, 1, 6, 6] and extra [N, 5] -> scores [N, 3]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, kernel_size=3)
        self.extra = nn.Linear(5, 8)
        self.head = nn.Linear(4 * 4 * 4 + 8, 3)

    def forward(self, image, extra):
        a = torch.flatten(torch.relu(self.conv(image)), 1)
        b = torch.relu(self.extra(extra))
        return self.head(torch.cat([a, b], dim=1))


def build():
    torch.manual_seed(2)
    return TwoInputs()


def example_inputs():
    return (torch.zeros(1, 1, 6, 6), torch.zeros(1, 5))
'''

RAISING = """
import torch
from torch import nn


class Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        raise ValueError({message!r})


def build():
    torch.manual_seed(3)
    return Broken()


def example_inputs():
    return (torch.zeros(1, 4),)
"""

# torch.special.zeta runs in eager PyTorch but neither ONNX exporter has a conversion for it, so
# loading succeeds and the failure happens inside the export stage (after the output folder's
# temporary sibling exists).
UNEXPORTABLE = """
import torch
from torch import nn


class Zeta(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return torch.special.zeta(self.fc(x).abs() + 2.0, torch.ones_like(x))


def build():
    torch.manual_seed(4)
    return Zeta()


def example_inputs():
    return (torch.ones(1, 4),)
"""


def write_model(folder: Path, text: str, name: str = "model.py") -> Path:
    """Write a model file into `folder` (created if needed) and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(text).lstrip())
    return path


_module_ids = itertools.count()


def import_model_file(path: Path) -> ModuleType:
    """Import a model file as a uniquely named module registered in sys.modules (so that what it
    defines can be pickled by reference, as a user's own module would be)."""
    name = f"qc_test_model_{next(_module_ids)}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def cnn_file(tmp_path: Path) -> Path:
    """model.py with build() -> TinyCNN ([N, 3, 8, 8] -> [N, 4]) and example_inputs()."""
    return write_model(tmp_path / "cnn", TINY_CNN)


@pytest.fixture
def mlp_file(tmp_path: Path) -> Path:
    """mlp.py with build() -> [N, 12] -> [N, 3] MLP and no example_inputs()."""
    return write_model(tmp_path / "mlp", TINY_MLP, "mlp.py")


@pytest.fixture
def two_input_file(tmp_path: Path) -> Path:
    """model.py whose forward takes (image [N, 1, 6, 6], extra [N, 5])."""
    return write_model(tmp_path / "two", TWO_INPUTS)


@pytest.fixture
def raising_file(tmp_path: Path) -> Path:
    """model.py whose forward raises ValueError("boom")."""
    return write_model(tmp_path / "broken", RAISING.format(message="boom"))


@pytest.fixture
def unexportable_file(tmp_path: Path) -> Path:
    """model.py that runs in PyTorch but cannot be exported to ONNX by either exporter."""
    return write_model(tmp_path / "zeta", UNEXPORTABLE)


# --- data ----------------------------------------------------------------------------------


def save_npz(path: Path, seed: int = 0, labels: int | None = None, **shapes: tuple[int, ...]) -> Path:
    """Save a .npz with one seeded float32 array per keyword (name=shape, first axis = samples).

    `labels=C` adds integer class ids in [0, C), one per sample."""
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {
        name: rng.standard_normal(shape).astype(np.float32) for name, shape in shapes.items()
    }
    if labels is not None:
        n = next(iter(shapes.values()))[0]
        arrays["labels"] = rng.integers(0, labels, size=n).astype(np.int64)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def make_npz(tmp_path: Path) -> Callable[..., Path]:
    """make_npz("calib.npz", image=(40, 3, 8, 8)) -> path of a seeded .npz under tmp_path."""

    def make(name: str, seed: int = 0, labels: int | None = None, **shapes: tuple[int, ...]) -> Path:
        return save_npz(tmp_path / name, seed=seed, labels=labels, **shapes)

    return make


# --- output helpers ------------------------------------------------------------------------

_BOX = re.compile(r"[\u2500-\u257f]")  # rich's box-drawing characters (error panels, tables)


def cli(*args: object, columns: int = 200) -> tuple[int, str]:
    """Run `qconvert ARGS` in-process: (exit code, output with whitespace flattened). A traceback in the
    output, or an exception other than SystemExit, fails the test."""
    from typer.testing import CliRunner

    from qconvert.cli import app

    runner = CliRunner(env={"COLUMNS": str(columns), "NO_COLOR": "1"})
    result = runner.invoke(app, [str(a) for a in args])
    assert "Traceback" not in result.output, result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"qconvert raised {result.exception!r}\n{result.output}") from result.exception
    return result.exit_code, flat(result.output)


def flat(text: str) -> str:
    """Console output with panel borders removed and all whitespace runs collapsed to one space,
    so that assertions do not depend on the terminal width rich wrapped to."""
    return " ".join(_BOX.sub(" ", text).split())


def inside_but_undecided(validation: dict[str, Any]) -> bool:
    """A report's `validation` (or `qconvert validate --json`'s) says INCONCLUSIVE with every measured
    figure inside its bound: the truth for a good model on a held-out set too small to show the
    bounds at 95% (at 16 bits top1_agreement>=0.995 takes 765 samples even if every one agrees)."""
    from qconvert.tolerance import parse_tolerance

    return validation["verdict"] == "inconclusive" and all(
        parse_tolerance(c["bound"])[0].holds(c["measured"]) for c in validation["checks"]
    )


def leftovers(parent: Path) -> list[str]:
    """Temporary folders a run may have left in `parent` (`.NAME.tmp-*`, `.NAME.old-*`)."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# --- the Quickstart run, shared ------------------------------------------------------------

QUICKSTART_OUT = Path("qconvert-out") / "digits_cnn-tensorrt-int8"


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], Path]:
    """`qconvert export --bits 8 --target tensorrt` on the built-in model, run once per session
    through the installed console script in an empty working directory: (process, cwd)."""
    cwd = tmp_path_factory.mktemp("quickstart")
    script = Path(sys.executable).with_name("qconvert")
    proc = subprocess.run(
        [str(script), "export", "--bits", "8", "--target", "tensorrt"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    return proc, cwd
