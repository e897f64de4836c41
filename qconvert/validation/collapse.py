"""Representational collapse: inputs the fp32 model tells apart that the quantized model no longer does.

Low precision can map different inputs to the same output. Agreement metrics (cosine, top-1)
compare each input's outputs on their own and can stay high while this happens, so the probe
looks at pairs of inputs instead:

- **Held-out pairs.** Pairs of held-out samples, sampled deterministically. Per output, a pair is
  *separated* when the two outputs differ: for class scores ([N, C], C > 1) when their top-1
  classes differ, for any other output when their distance (L2 over the flattened sample) is above
  a threshold. The threshold is DISTANCE_FRACTION (5%) of the median distance between the
  reference's outputs over the sampled pairs: two outputs closer than a twentieth of what separates
  two typical inputs count as the same. Per output, the collapse rate is the share of the pairs
  the reference separates that the candidate does not; the model's rate is the worst output's
  (per output, because held-out pairs differ in many ways at once and an output that copes would
  hide one that collapses).
- **Sequence families** (models with one integer token input [batch, seq]). Pairs built to differ
  minimally, at growing lengths L, with a repeated token t and other tokens a, b:
  `copy`: [a, t x (L-1)] vs [b, t x (L-1)] (one token differs, the first);
  `count`: [t x L] vs [t x (L+1)] (L vs L+1 repeats). Sequences are right-padded with the pad
  token where the sequence axis is fixed (a dynamic axis is run one length at a time). A pair is
  separated when any output separates it (same rules and thresholds as above). Per length,
  the share of pairs each model separates; a length is *kept* while the candidate's share is at
  least the reference's minus KEEP_MARGIN, and `kept_longest` is the longest length up to which
  every length is kept.

The candidate runs on the given providers and graph-optimization setting (export validation
runs Q/DQ graphs with optimizations off where the target's provider is missing); the reference
runs on the CPU provider.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.calibrate import Dataset
from qconvert.errors import ConfigError
from qconvert.runtime import CPU, Session, make_session
from qconvert.targets import Provider
from qconvert.validation.intervals import Interval, wilson
from qconvert.validation.metrics import is_classifier_output

log = logging.getLogger(__name__)

DEFAULT_MAX_PAIRS = 2000  # held-out pairs compared
DEFAULT_FAMILY_PAIRS = 32  # probe pairs per family and length (at most)
DISTANCE_FRACTION = 0.05  # separated: distance > this share of the reference's median pair distance
SEPARATES = 0.9  # a model "separates" a length when at least this share of its pairs is separated
KEEP_MARGIN = 0.05  # the candidate keeps a length while its rate >= the reference's minus this
DEFAULT_PAD = 0  # the token that fills a fixed-length sequence axis beyond the probe sequence
DEFAULT_LENGTHS = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64, 96, 128)
DYNAMIC_MAX_LEN = 64  # longest default probe on a model whose sequence axis is dynamic
INTEGER_TYPES = ("tensor(int64)", "tensor(int32)")

FAMILY_PATTERNS = {
    "copy": "[a, t x (L-1)] vs [b, t x (L-1)]: one token differs",
    "count": "[t x L] vs [t x (L+1)]: L vs L+1 repeats of one token",
}


@dataclass(frozen=True)
class LengthResult:
    """One (family, length) point: how many probe pairs each model separates."""

    length: int
    pairs: int
    reference_separated: int
    candidate_separated: int

    @property
    def reference_rate(self) -> float:
        return self.reference_separated / self.pairs if self.pairs else 0.0

    @property
    def candidate_rate(self) -> float:
        return self.candidate_separated / self.pairs if self.pairs else 0.0

    @property
    def kept(self) -> bool:
        """The candidate separates these pairs as well as the reference (within KEEP_MARGIN)."""
        return self.candidate_rate >= self.reference_rate - KEEP_MARGIN


def _longest(points: Sequence[LengthResult], holds: Callable[[LengthResult], bool]) -> int | None:
    """The longest length up to which `holds` is true at every probed length."""
    longest = None
    for point in sorted(points, key=lambda p: p.length):
        if not holds(point):
            break
        longest = point.length
    return longest


@dataclass(frozen=True)
class FamilyResult:
    """A sequence probe family ("copy" or "count") over growing lengths."""

    name: str
    lengths: tuple[LengthResult, ...]

    @property
    def reference_longest(self) -> int | None:
        """Longest length up to which the reference separates >= SEPARATES of the pairs at every length."""
        return _longest(self.lengths, lambda p: p.reference_rate >= SEPARATES)

    @property
    def candidate_longest(self) -> int | None:
        """The same for the candidate on its own."""
        return _longest(self.lengths, lambda p: p.candidate_rate >= SEPARATES)

    @property
    def kept_longest(self) -> int | None:
        """Longest length up to which the candidate keeps up with the reference at every length
        (`LengthResult.kept`); None when it already falls behind at the shortest."""
        return _longest(self.lengths, lambda p: p.kept)

    @property
    def lost(self) -> tuple[int, ...]:
        """The lengths at which the candidate falls behind the reference."""
        return tuple(p.length for p in self.lengths if not p.kept)

    def as_json(self) -> dict[str, Any]:
        return {
            "pattern": FAMILY_PATTERNS.get(self.name, ""),
            "lengths": [p.length for p in self.lengths],
            "pairs": [p.pairs for p in self.lengths],
            "reference_rate": [p.reference_rate for p in self.lengths],
            "candidate_rate": [p.candidate_rate for p in self.lengths],
            "reference_longest": self.reference_longest,
            "candidate_longest": self.candidate_longest,
            "kept_longest": self.kept_longest,
            "lost": list(self.lost),
        }


@dataclass(frozen=True)
class OutputCollapse:
    """Held-out pairs on one output: how many the reference separates and how many of those the
    candidate no longer does."""

    rule: str  # "top1" (class scores) or "distance"
    threshold: float | None  # the distance that counts as separated ("distance" only)
    pairs: int  # sampled pairs the reference separates on this output
    collapsed: int  # of those, pairs the candidate does not separate on this output

    @property
    def rate(self) -> float:
        return self.collapsed / self.pairs if self.pairs else 0.0

    def as_json(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "threshold": self.threshold,
            "pairs": self.pairs,
            "collapsed": self.collapsed,
            "rate": self.rate,
        }


@dataclass(frozen=True)
class CollapseResult:
    """What the probe found. `rate` (the tolerance metric `collapse_rate`) is the worst output's share
    of the held-out pairs the reference separates that the candidate no longer separates."""

    sampled: int  # held-out pairs compared
    outputs: dict[str, OutputCollapse]
    families: dict[str, FamilyResult] = field(default_factory=dict)  # "copy", "count"; empty: n/a
    families_skipped: str | None = None  # why `families` is empty
    notes: tuple[str, ...] = ()
    samples: int = 0  # held-out samples the pairs were drawn from

    @property
    def worst(self) -> str | None:
        """The output with the highest collapse rate (None: no outputs)."""
        return max(self.outputs, key=lambda name: self.outputs[name].rate, default=None)

    @property
    def rate(self) -> float:
        return 0.0 if self.worst is None else self.outputs[self.worst].rate

    @property
    def pairs(self) -> int:
        """Held-out pairs the reference separates, on the worst output."""
        return 0 if self.worst is None else self.outputs[self.worst].pairs

    @property
    def collapsed(self) -> int:
        """Of those, pairs the candidate no longer separates."""
        return 0 if self.worst is None else self.outputs[self.worst].collapsed

    @property
    def effective_pairs(self) -> int:
        """What the worst output's pairs are worth as independent samples. Pairs drawn from N held-out
        samples share samples, and an average over all pairs is at best as precise as one over N/2
        independent pairs (Hoeffding 1948: Var U <= 2 zeta / N for a pair statistic); M pairs drawn
        from them add 1/M, so 1 / (2/N + 1/M)."""
        if not self.pairs or self.samples < 2:
            return 0
        return max(1, int(1 / (2 / self.samples + 1 / self.pairs)))

    def interval(self, level: float) -> Interval:
        """The collapse rate's Wilson interval, on the effective pairs."""
        n = self.effective_pairs
        return wilson(self.rate * n, n, level)

    def as_json(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "worst_output": self.worst,
            "sampled": self.sampled,
            "samples": self.samples,
            "effective_pairs": self.effective_pairs,
            "pairs": self.pairs,
            "collapsed": self.collapsed,
            "outputs": {name: o.as_json() for name, o in self.outputs.items()},
            "distance_fraction": DISTANCE_FRACTION,
            "families": {name: f.as_json() for name, f in self.families.items()},
            "families_skipped": self.families_skipped,
            "separates": SEPARATES,
            "keep_margin": KEEP_MARGIN,
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """One line: the collapse rate, and per family the longest length kept."""
        where = f" on {self.worst!r}" if self.worst is not None and len(self.outputs) > 1 else ""
        text = (
            f"collapse rate {100 * self.rate:.2f}% ({self.collapsed} of {self.pairs} held-out pairs the "
            f"reference separates{where})"
        )
        for name, fam in self.families.items():
            text += (
                f"; {name}: kept up to length {fam.kept_longest} (separated up to {fam.reference_longest} "
                f"by the reference, {fam.candidate_longest} by the candidate)"
            )
        return text


@dataclass(frozen=True)
class _Rule:
    """When one output tells two inputs apart."""

    kind: str  # top1 | distance
    threshold: float = 0.0

    def separated(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per row, whether outputs `a[k]` and `b[k]` differ. A NaN output carries nothing to tell
        inputs apart by, so a row with one never separates."""
        if self.kind == "top1":
            finite = ~np.isnan(a).any(axis=1) & ~np.isnan(b).any(axis=1)
            return np.asarray((a.argmax(axis=1) != b.argmax(axis=1)) & finite)
        diff = (a.astype(np.float64) - b.astype(np.float64)).reshape(len(a), -1)
        return np.asarray(np.linalg.norm(diff, axis=1) > self.threshold)


def _separated(rules: dict[str, _Rule], a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> np.ndarray:
    """A pair is separated when any output separates it."""
    parts = [rule.separated(a[name], b[name]) for name, rule in rules.items()]
    return np.logical_or.reduce(parts) if parts else np.zeros(0, dtype=bool)


def sample_pairs(n: int, max_pairs: int, seed: int = 0) -> np.ndarray:
    """Up to `max_pairs` distinct pairs (i < j) of `n` samples, `[k, 2]`: all of them when there are
    few enough, else a seeded sample without replacement (sorted, so the order is reproducible)."""
    total = n * (n - 1) // 2
    if total <= max_pairs:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], axis=1)
    ranks = np.sort(np.random.default_rng(seed).choice(total, size=max_pairs, replace=False))
    rows = np.arange(n)
    starts = rows * (2 * n - rows - 1) // 2  # rank of the first pair (i, i+1) of row i
    i = np.searchsorted(starts, ranks, side="right") - 1
    j = ranks - starts[i] + i + 1
    return np.stack([i, j], axis=1)


def _held_out(
    rules: dict[str, _Rule], ref: dict[str, np.ndarray], cand: dict[str, np.ndarray], pairs: np.ndarray
) -> dict[str, OutputCollapse]:
    """Per output, the sampled pairs the reference separates and those the candidate collapses.

    Per output rather than for the model as a whole: held-out pairs differ in many ways at once,
    and an output that copes (say, a copy head) would otherwise hide one that collapses."""
    result = {}
    for name, rule in rules.items():
        ref_sep = rule.separated(ref[name][pairs[:, 0]], ref[name][pairs[:, 1]])
        cand_sep = rule.separated(cand[name][pairs[:, 0]], cand[name][pairs[:, 1]])
        result[name] = OutputCollapse(
            rule=rule.kind,
            threshold=rule.threshold if rule.kind == "distance" else None,
            pairs=int(ref_sep.sum()),
            collapsed=int((ref_sep & ~cand_sep).sum()),
        )
    return result


def _rules(names: Sequence[str], outputs: dict[str, np.ndarray], pairs: np.ndarray) -> dict[str, _Rule]:
    """Per output: top-1 for class scores, else a distance threshold from the reference's pairs."""
    rules = {}
    for name in names:
        out = outputs[name]
        if is_classifier_output(out):
            rules[name] = _Rule("top1")
            continue
        diff = (out[pairs[:, 0]].astype(np.float64) - out[pairs[:, 1]].astype(np.float64)).reshape(
            len(pairs), -1
        )
        distances = np.linalg.norm(diff, axis=1)
        finite = distances[np.isfinite(distances)]
        median = float(np.median(finite)) if finite.size else 0.0
        rules[name] = _Rule("distance", DISTANCE_FRACTION * median)
    return rules


def _outputs(session: Session, data: Dataset) -> dict[str, np.ndarray]:
    return dict(zip(session.output_names, session.run(data), strict=True))


def _matched(reference: dict[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The reference's outputs under the candidate's names: by name, else (same count) by position."""
    if sorted(reference) == sorted(names):
        return reference
    if len(reference) == len(names):
        return dict(zip(names, reference.values(), strict=True))
    raise ConfigError(
        f"the collapse probe's reference has outputs {', '.join(reference)} and the candidate "
        f"{', '.join(names)}; give the reference the candidate was made from."
    )


# --- sequence families ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _TokenInput:
    name: str
    dtype: type
    fixed: int | None  # the sequence axis when it is fixed; None: dynamic


def _token_input(session: Session) -> _TokenInput | str:
    """The single integer [batch, seq] input of a sequence model, or why there is none."""
    inputs = session.inner.get_inputs()
    described = ", ".join(f"{i.name} ({i.type} {list(i.shape)})" for i in inputs)
    if len(inputs) != 1 or inputs[0].type not in INTEGER_TYPES or len(inputs[0].shape) != 2:
        return (
            "not a sequence model: the copy and count probes need a single integer token input "
            f"[batch, seq]; this model takes {described}"
        )
    seq = inputs[0].shape[1]
    dtype = np.int64 if inputs[0].type == "tensor(int64)" else np.int32
    return _TokenInput(inputs[0].name, dtype, seq if isinstance(seq, int) and seq > 0 else None)


PASS_THROUGH_OPS = ("Cast", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten")


def vocab_from_graph(path: Path, input_name: str) -> int | None:
    """The vocabulary size: rows of the [vocab, d] initializer that a Gather looks the token input
    up in (through Cast/Reshape-like nodes). None when there is no such embedding."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    reached = {input_name}
    for node in graph.node:  # nodes are topologically sorted
        if node.op_type in PASS_THROUGH_OPS and node.input and node.input[0] in reached:
            reached.update(node.output)
        elif node.op_type == "Gather" and len(node.input) > 1 and node.input[1] in reached:
            dims = shapes.get(node.input[0])
            if dims is not None and len(dims) == 2:
                return int(dims[0])
    return None


def _family_pairs(
    symbols: list[int], token: int | None, count: int, seed: int
) -> tuple[list[tuple[int, int, int]], list[int]]:
    """(copy triples (a, b, t), count tokens t), the same at every length; deterministic."""
    rng = np.random.default_rng(seed)
    repeat = [token] if token is not None else [int(t) for t in rng.permutation(symbols)[:count]]
    copies: list[tuple[int, int, int]] = []
    others = [s for s in symbols if s != token]
    if len(others) >= (2 if token is not None else 3):
        for _ in range(count):
            if token is None:
                a, b, t = (int(x) for x in rng.choice(others, size=3, replace=False))
            else:
                a, b = (int(x) for x in rng.choice(others, size=2, replace=False))
                t = token
            copies.append((a, b, t))
    return copies, repeat


def _run_sequences(
    session: Session, inp: _TokenInput, rows: list[list[int]], pad: int
) -> dict[str, np.ndarray]:
    """Outputs for token sequences of any lengths: right-padded to a fixed sequence axis, or run
    one length at a time where the axis is dynamic (padding would change what a dynamic model sees)."""
    if inp.fixed is not None:
        batch: np.ndarray = np.full((len(rows), inp.fixed), pad, dtype=inp.dtype)
        for k, row in enumerate(rows):
            batch[k, : len(row)] = row
        return _probe_outputs(session, inp.name, batch)
    results: dict[str, np.ndarray] = {}
    for length in sorted({len(r) for r in rows}):
        index = [k for k, r in enumerate(rows) if len(r) == length]
        batch = np.array([rows[k] for k in index], dtype=inp.dtype)
        for name, out in _probe_outputs(session, inp.name, batch).items():
            if name not in results:
                results[name] = np.zeros((len(rows), *out.shape[1:]), dtype=out.dtype)
            results[name][index] = out
    return results


def _probe_outputs(session: Session, name: str, tokens: np.ndarray) -> dict[str, np.ndarray]:
    """Run probe sequences; a model that rejects them was given the wrong vocabulary or pad token."""
    from qconvert.errors import brief

    try:
        return _outputs(session, Dataset("collapse probe", {name: tokens}))
    except Exception as e:
        raise ConfigError(
            f"collapse probe: the model failed on the probe sequences ({type(e).__name__}: {brief(e)}). "
            "The sequences use token ids below the vocabulary size and right-pad with the pad token: set "
            "them with --probe-option vocab=N / pad=ID / token=ID."
        ) from e


def _family(
    name: str,
    lengths: Sequence[int],
    make: Callable[[int], list[tuple[list[int], list[int]]]],
    run: Callable[[list[list[int]]], tuple[dict[str, np.ndarray], dict[str, np.ndarray]]],
    rules: dict[str, _Rule],
) -> FamilyResult:
    """Build the pairs `make(length)` for every length, run them all in one go per model, and
    count the separated pairs per length."""
    rows: list[list[int]] = []
    spans = []
    for length in lengths:
        made = make(length)
        spans.append((length, len(rows) // 2, len(made)))
        for a, b in made:
            rows += [a, b]
    ref, cand = run(rows)
    points = []
    for length, start, count in spans:
        first = slice(2 * start, 2 * (start + count), 2)
        second = slice(2 * start + 1, 2 * (start + count), 2)
        ref_sep = _separated(rules, _rows(ref, first), _rows(ref, second))
        cand_sep = _separated(rules, _rows(cand, first), _rows(cand, second))
        points.append(LengthResult(length, count, int(ref_sep.sum()), int(cand_sep.sum())))
    return FamilyResult(name, tuple(points))


def _rows(outputs: dict[str, np.ndarray], index: slice | np.ndarray) -> dict[str, np.ndarray]:
    return {name: out[index] for name, out in outputs.items()}


def _probe_lengths(lengths: Sequence[int] | None, limit: int) -> list[int]:
    """The lengths to probe, up to `limit`: the defaults (and the limit itself), or those given."""
    if lengths is None:
        chosen = {n for n in DEFAULT_LENGTHS if n <= limit} | ({limit} if limit >= 1 else set())
    else:
        chosen = {n for n in lengths if 1 <= n <= limit}
    return sorted(chosen)


def _families(
    reference: Session,
    candidate: Session,
    reference_path: Path,
    rules: dict[str, _Rule],
    *,
    lengths: Sequence[int] | None,
    vocab: int | None,
    token: int | None,
    pad: int,
    family_pairs: int,
    seed: int,
) -> tuple[dict[str, FamilyResult], str | None, list[str]]:
    """(families, why there are none, notes)."""
    inp = _token_input(reference)
    if isinstance(inp, str):
        return {}, inp, []
    if vocab is None:
        vocab = vocab_from_graph(reference_path, inp.name)
        if vocab is None:
            return (
                {},
                f"no token embedding found (a Gather looking {inp.name!r} up in a [vocab, d] initializer), "
                "so the vocabulary is unknown: give it (--probe-option vocab=N)",
                [],
            )
    if token is not None and (not 0 <= token < vocab or token == pad):
        raise ConfigError(
            f"collapse probe: token={token} must be a token id in 0..{vocab - 1} other than the pad token "
            f"({pad}); fix --probe-option token=."
        )
    symbols = [t for t in range(vocab) if t != pad]
    copies, repeats = _family_pairs(symbols, token, family_pairs, seed)
    limit = inp.fixed if inp.fixed is not None else DYNAMIC_MAX_LEN
    names = candidate.output_names
    notes = []
    if inp.fixed is not None:
        notes.append(f"sequence axis fixed at {inp.fixed}: probe sequences are right-padded with token {pad}")

    def run(rows: list[list[int]]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        ref = _matched(_run_sequences(reference, inp, rows, pad), names)
        return ref, _run_sequences(candidate, inp, rows, pad)

    families = {}
    copy_lengths = _probe_lengths(lengths, limit)
    if copies and copy_lengths:
        families["copy"] = _family(
            "copy",
            copy_lengths,
            lambda n: [([a] + [t] * (n - 1), [b] + [t] * (n - 1)) for a, b, t in copies],
            run,
            rules,
        )
    elif not copies:
        notes.append(f"copy family skipped: it needs three distinct tokens besides the pad; vocab is {vocab}")
    count_lengths = _probe_lengths(lengths, limit - 1)
    if count_lengths:
        families["count"] = _family(
            "count", count_lengths, lambda n: [([t] * n, [t] * (n + 1)) for t in repeats], run, rules
        )
    if not families:
        return (
            {},
            f"no probe length fits the model's sequence axis ({limit}) and the lengths asked for",
            notes,
        )
    return families, None, notes


def probe_collapse(
    reference: Path,
    candidate: Path,
    data: Dataset,
    *,
    max_pairs: int = DEFAULT_MAX_PAIRS,
    lengths: Sequence[int] | None = None,
    vocab: int | None = None,
    token: int | None = None,
    pad: int = DEFAULT_PAD,
    family_pairs: int = DEFAULT_FAMILY_PAIRS,
    seed: int = 0,
    optimize: bool = True,
    providers: Sequence[Provider] = (CPU,),
) -> CollapseResult:
    """Probe `candidate` (ONNX) for representational collapse against `reference` (the fp32 ONNX).

    `data` holds the held-out inputs the pairs are drawn from (at most `max_pairs`, seeded by
    `seed`). For sequence models, `lengths` overrides the probed lengths, `vocab` the vocabulary
    size read from the embedding, `token` the repeated token (default: up to `family_pairs` tokens
    drawn with `seed`), and `pad` is the token that fills a fixed sequence axis. `optimize` and
    `providers` say how the candidate runs (export validation turns optimizations off where the
    target's provider is missing, so Q/DQ arithmetic runs as written); the reference runs on the
    CPU provider. See the module docstring for the rules."""
    if max_pairs < 1 or family_pairs < 1:
        raise ConfigError(
            f"collapse probe: max_pairs ({max_pairs}) and family_pairs ({family_pairs}) must be at least 1."
        )
    ref_session = make_session(Path(reference))
    cand_session = make_session(Path(candidate), providers, optimize=optimize)
    names = cand_session.output_names
    ref_out = _matched(_outputs(ref_session, data), names)
    cand_out = _outputs(cand_session, data)
    pairs = sample_pairs(len(data), max_pairs, seed)
    rules = _rules(names, ref_out, pairs)
    outputs = _held_out(rules, ref_out, cand_out, pairs)
    notes = []
    if len(pairs) == 0:
        notes.append(f"{len(data)} held-out sample(s): no pairs to compare; give more with --data")
    for name, out in outputs.items():
        if len(pairs) and out.pairs < len(pairs) / 2:
            notes.append(
                f"the reference itself separates only {out.pairs} of {len(pairs)} held-out pairs on "
                f"{name!r}: its collapse rate rests on few pairs"
            )
    families, skipped, family_notes = _families(
        ref_session,
        cand_session,
        Path(reference),
        rules,
        lengths=lengths,
        vocab=vocab,
        token=token,
        pad=pad,
        family_pairs=family_pairs,
        seed=seed,
    )
    result = CollapseResult(
        sampled=len(pairs),
        outputs=outputs,
        families=families,
        families_skipped=skipped,
        notes=(*notes, *family_notes),
        samples=len(data),
    )
    log.info("collapse probe of %s: %s", candidate, result.summary())
    return result


# --probe-option KEY=VALUE: probe_collapse's keyword arguments, as text
_INT_OPTIONS = ("vocab", "token", "pad", "max_pairs", "family_pairs", "seed")


def collapse_options(options: Sequence[tuple[str, str]]) -> dict[str, Any]:
    """Keyword arguments for `probe_collapse` from `--probe-option KEY=VALUE` pairs: vocab, token,
    pad, max_pairs, family_pairs, seed (integers) and lengths (integers joined by commas)."""
    parsed: dict[str, Any] = {}
    for key, value in options:
        if key == "lengths":
            items = [v.strip() for v in value.split(",") if v.strip()]
            if not items or not all(v.isdigit() and int(v) > 0 for v in items):
                raise ConfigError(
                    f"--probe-option lengths={value}: give positive integers joined by commas, e.g. "
                    "lengths=4,8,16."
                )
            parsed[key] = tuple(int(v) for v in items)
        elif key in _INT_OPTIONS:
            try:
                parsed[key] = int(value)
            except ValueError:
                raise ConfigError(f"--probe-option {key}={value}: {key} must be an integer.") from None
            if parsed[key] < (1 if key in ("vocab", "max_pairs", "family_pairs") else 0):
                raise ConfigError(f"--probe-option {key}={value}: out of range.")
        else:
            raise ConfigError(
                f"--probe-option {key}: unknown option for the collapse probe. Valid: "
                f"{', '.join((*_INT_OPTIONS, 'lengths'))}."
            )
    return parsed
