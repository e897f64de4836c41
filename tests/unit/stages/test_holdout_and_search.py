"""How many calibration samples are set aside for validation (stages/data.py), and --auto's float
fallback search (fallback.py) stopping only on a PASSED verdict, on real validation results."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from qconvert.fallback import search
from qconvert.settings import HOLDOUT_FRACTION, MIN_CALIBRATION_SAMPLES
from qconvert.stages.data import holdout_size
from qconvert.tolerance import Tolerance
from qconvert.validation import ValidationResult, evaluate


def test_holdout_size_grows_to_what_passing_needs_while_calibration_keeps_its_minimum() -> None:
    assert holdout_size(1000, None) == round(1000 * HOLDOUT_FRACTION)  # nothing needs more
    assert holdout_size(1000, 125) == 200  # 20% already enough
    assert holdout_size(800, 194) == 194  # more than 20%, 606 left to calibrate on
    assert holdout_size(194 + MIN_CALIBRATION_SAMPLES, 194) == 194  # exactly the minimum left
    # too small to spare that many: 20% as before (the run then says the verdict will be INCONCLUSIVE)
    assert holdout_size(193 + MIN_CALIBRATION_SAMPLES, 194) == round((193 + MIN_CALIBRATION_SAMPLES) * 0.2)
    assert holdout_size(20, 125) == 4  # the EfficientNet case of issue 15: 4 of 20 photos
    assert holdout_size(3, None) == 1


def _validation(n: int, flips: int) -> ValidationResult:
    """A real evaluation: `n` samples of 10-class scores, the winner moved in `flips` of them."""
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(n, 10)).astype(np.float32)
    ref[np.arange(n), rng.integers(0, 10, n)] += 4.0
    cand = ref.copy()
    rows = np.arange(flips)
    cand[rows, ref[rows].argmin(1)] = ref[rows].max(1) + 1.0
    return evaluate(["logits"], [ref], [cand], Tolerance.for_bits(8, "cosine>=0"))


def test_the_fallback_search_goes_on_through_inconclusive_steps(tmp_path: Path) -> None:
    # each node kept in float moves the verdict: failed, then inconclusive (98% on 300), then passed
    steps = [_validation(300, 30), _validation(300, 6), _validation(300, 0)]
    assert [v.verdict for v in steps] == ["failed", "inconclusive", "passed"]

    def build(kept: tuple[str, ...], dest: Path) -> Path:
        dest.write_text(str(len(kept)))
        return dest

    def validate(path: Path) -> ValidationResult:
        return steps[int(path.read_text()) - 1]

    result = search(["a", "b", "c", "d"], 4, build, validate, tmp_path / "work")
    assert result.passed and result.kept_float == ("a", "b", "c")
    assert [s.verdict for s in result.steps] == ["failed", "inconclusive", "passed"]
    assert result.steps[1].as_json()["passed"] is False
