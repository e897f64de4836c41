"""A token output is compared on its real tokens: what the model leaves at padding positions (never
used downstream) does not move cosine, SQNR or max_abs, while an error on a real token does."""

from __future__ import annotations

import numpy as np

from qconvert.tolerance import Tolerance
from qconvert.validation import FAILED, TokenOutputs, evaluate


def test_padding_positions_do_not_count_and_real_tokens_do() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(3, 5, 8)).astype(np.float32)
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    tokens = TokenOutputs(mask=mask, kinds={"h": "embedding"})
    padded = ref.copy()
    padded[mask == 0] = 100.0 * rng.normal(size=(int((mask == 0).sum()), 8))
    same = evaluate(["h"], [ref], [padded], Tolerance.for_bits(8, text=True), tokens=tokens)
    assert same.outputs["h"]["cosine"] == 1.0 and same.outputs["h"]["max_abs"] == 0.0
    # nothing real changed: no check fails; 3 sequences are too few for a PASSED verdict (and the
    # intervals count sequences, not their 13 real tokens: tokens of one sequence are not independent)
    assert not [c for c in same.checks if c.verdict == FAILED] and same.data_limited
    assert same.intervals["h"]["cosine"].samples == same.intervals["h"]["embedding_cosine"].samples == 3
    wrong = padded.copy()
    wrong[1, 2] = -wrong[1, 2]  # one real token flipped
    hurt = evaluate(["h"], [ref], [wrong], Tolerance.for_bits(8, text=True), tokens=tokens)
    assert hurt.outputs["h"]["cosine_min"] < -0.99
    assert hurt.outputs["h"]["max_abs"] > 0
