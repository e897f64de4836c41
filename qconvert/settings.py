"""Settings for every command, as frozen dataclasses composed of groups. Defaults live here and only here.

Groups (each checks its own fields):

    SourceSettings   SOURCE, --input, --task, --opset          what model, and how it is exported
    DataSettings     --calibration, --data, --samples, DataOptions (image folders, text files)
    QuantizeSettings --bits, --mode, --calibration-method, --placement, --exclude/--include,
                     --block-size, --algorithm, --recover       how it is quantized
    TargetSettings   --target, --target-option                 what it is quantized for
    CheckSettings    --tolerance, --confidence, --latency-batch, --auto*, sensitivity sizes
    OutputSettings   -o/--out, --force

`ExportSettings` (public name `RunConfig`) is the six groups; `SweepSettings` (`SweepConfig`) is an
ExportSettings `base` plus the bit widths, modes and executor; a trial is `replace(base, bits=...,
mode=..., out_dir=...)`. Validate and benchmark take their own groups (candidate, held-out data, checks,
reports). Each composed class takes flat keywords (`RunConfig(source=..., bits=4)`, routed to the group
that holds the field, also through `dataclasses.replace`) and answers flat reads (`config.bits`).

Each field that is a command-line flag carries a `Flag` in its metadata: the flag's name, how its
text is parsed and how its value is printed back. `to_argv()` (the manifest's `command`) and the CLI's
settings builder (cli/options.py) read only these, so a new flag is a field with its Flag plus one
typer option declaration.
"""

from __future__ import annotations

import os
import re
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from qconvert import choices
from qconvert.errors import ConfigError, SourceError
from qconvert.tolerance import DEFAULT_CONFIDENCE, MODEL_METRICS, Tolerance, check_confidence, parse_tolerance
from qconvert.types import DEFAULT_BLOCK_SIZE, MIN_BLOCK_SIZE, InputSpec

DEFAULT_OPSET = 18
DEFAULT_BITS = 8
DEFAULT_TARGET = "cpu"
DEFAULT_OUT_ROOT = Path("qconvert-out")
DEFAULT_LATENCY_REPEATS = 50
DEFAULT_LATENCY_BATCH = 1
DEFAULT_AUTO_SECONDS = 600.0
DEFAULT_SENSITIVITY_SAMPLES = 64  # held-out samples the per-layer sensitivity runs on
DEFAULT_SENSITIVITY_ISOLATED = 8  # nodes given an isolated measurement (one quantization each)
# When no held-out data is given, this share of the calibration samples is set aside (never used
# for calibration) and the model is validated on it; more where the tolerance needs more to pass at
# all, as long as MIN_CALIBRATION_SAMPLES are left to calibrate on (stages/data.py).
HOLDOUT_FRACTION = 0.2
MIN_CALIBRATION_SAMPLES = 64
TEXT_PADDING = ("max_length", "longest")
IMAGE_LAYOUTS = ("nchw", "nhwc")
# `--calibration random`: seeded normal inputs of the model's shapes. Only when asked for by name;
# without --data, validation then runs on another seeded random set of RANDOM_HELDOUT_SAMPLES.
RANDOM_DATA = "random"
RANDOM_CALIBRATION_SAMPLES = 64  # when --samples is not given
RANDOM_HELDOUT_SAMPLES = 100
RANDOM_CALIBRATION_SEED = 0
RANDOM_HELDOUT_SEED = 1
EXECUTORS = ("local", "ray")
# `qconvert validate --probe NAME`: extra measurements beyond comparing outputs sample by sample
PROBES = ("collapse",)
DEFAULT_BENCHMARK_REPEATS = 100
DEFAULT_BENCHMARK_BATCH = 1


# --- flags: how a field is given on the command line and printed back ----------------------------


def _text(value: Any) -> list[str]:
    return [str(value)]


@dataclass(frozen=True)
class Flag:
    """A field's command-line flag. `parse` turns the flag's text (for a `many` flag, each item) into
    the field's value (None: the text is the value); `show` turns the value into the texts printed
    after the flag (one flag per text). A bool prints `name` when true and `negative` when false,
    whichever is not the default."""

    name: str  # "--bits"; "" for the positional argument
    parse: Callable[[Any], Any] | None = None
    show: Callable[[Any], list[str]] = _text
    many: bool = False  # repeatable: the field is a tuple, one item per flag
    negative: str | None = None  # a bool that defaults to true: the flag that turns it off
    # to_argv: printed even at the default (the manifest's command always names these) ...
    always: bool = False
    # ... and only where `when(group)` holds for the group that holds the field
    when: Callable[[Any], bool] | None = None
    in_command: bool = True  # False: a flag the manifest's command leaves out (--force)
    # the position in to_argv, so the manifest's command stays what it was before the groups;
    # a new flag goes after --auto-seconds and before --input
    rank: int = 50


FLAG = "qconvert.flag"
API_ONLY = "qconvert.api_only"  # a setting of the Python API only (no flag)
GROUP = "qconvert.group"


def flag(default: Any = MISSING, *, factory: Any = MISSING, **spec: Any) -> Any:
    """A dataclass field that is a command-line flag (`spec`: the Flag's fields)."""
    kwargs: dict[str, Any] = {"metadata": {FLAG: Flag(**spec)}}
    if factory is not MISSING:
        kwargs["default_factory"] = factory
    else:
        kwargs["default"] = default
    return field(**kwargs)


def api_only(default: Any) -> Any:
    """A field the command line does not set (latency repeats, sensitivity sizes)."""
    return field(default=default, metadata={API_ONLY: True})


def group(factory: Callable[[], Any]) -> Any:
    """A field holding one settings group (flat keywords and reads are routed into it)."""
    return field(default_factory=factory, metadata={GROUP: True})


def each(show: Callable[[Any], str]) -> Callable[[Any], list[str]]:
    """`show` for a repeatable flag: one printed text per item."""
    return lambda values: [show(v) for v in values]


def default_of(f: Field[Any]) -> Any:
    """A field's default value (its factory called)."""
    return f.default_factory() if f.default_factory is not MISSING else f.default


def holds_settings(f: Field[Any]) -> bool:
    """Whether field `f` holds settings of its own (a group, or DataOptions) rather than a value."""
    return FLAG not in f.metadata and API_ONLY not in f.metadata


def flag_fields(
    settings: Any, shadowed: frozenset[str] = frozenset()
) -> Iterator[tuple[Field[Any], Flag, Any]]:
    """Every flag field of a settings object, its groups' and nested options' included, with the
    object that holds it. A field of the object's own shadows a group's field of the same name
    (SweepSettings.bits, the bit widths, over its base's bits)."""
    own = frozenset(f.name for f in fields(settings) if FLAG in f.metadata)
    for f in fields(settings):
        value = getattr(settings, f.name)
        if FLAG in f.metadata and f.name not in shadowed:
            yield f, f.metadata[FLAG], settings
        elif holds_settings(f) and is_dataclass(value):
            yield from flag_fields(value, shadowed | own)


def api_fields(settings: Any) -> Iterator[str]:
    """The names of the fields no flag sets (the Python API's only), groups included."""
    for f in fields(settings):
        value = getattr(settings, f.name)
        if API_ONLY in f.metadata:
            yield f.name
        elif holds_settings(f) and is_dataclass(value):
            yield from api_fields(value)


def to_argv(settings: Any, command: str) -> list[str]:
    """`qconvert COMMAND ...` that makes `settings`: every flag field not at its default (or `always`),
    in rank order, printed by its Flag."""
    placed: list[tuple[int, list[str]]] = []
    for f, spec, holder in flag_fields(settings):
        value = getattr(holder, f.name)
        if not spec.in_command or (spec.when is not None and not spec.when(holder)):
            continue
        if value is None or (not spec.always and value == default_of(f)):
            continue
        if isinstance(value, bool):
            words = [spec.name if value else str(spec.negative)]
        else:
            texts = spec.show(value)
            words = texts if not spec.name else [w for t in texts for w in (spec.name, t)]
        placed.append((spec.rank, words))
    placed.sort(key=lambda p: p[0])
    return ["qconvert", command, *(w for _, words in placed for w in words)]


def flags_of(cls: type) -> dict[str, Flag]:
    """Every flag a settings class takes, by flat field name (a class's own field before its groups':
    SweepSettings.bits shadows its base's)."""
    found: dict[str, Flag] = {f.name: f.metadata[FLAG] for f in fields(cls) if FLAG in f.metadata}
    for f in fields(cls):
        inner = default_of(f) if holds_settings(f) else None
        if is_dataclass(inner):
            for name, spec in flags_of(type(inner)).items():
                found.setdefault(name, spec)
    return found


def from_flags(cls: type, texts: dict[str, Any]) -> Any:
    """`cls` built from command-line values by flat field name, each parsed by its field's Flag (a
    repeatable flag's value is a list; a bad value is a ConfigError that names its flag)."""
    flags = flags_of(cls)
    kwargs: dict[str, Any] = {}
    for name, value in texts.items():
        spec = flags[name]
        if spec.parse is not None and value is not None and not isinstance(value, bool):
            value = tuple(spec.parse(v) for v in value) if spec.many else spec.parse(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


# --- composing groups: flat keywords in, flat reads out ---------------------------------------------


def _names(settings: Any) -> set[str]:
    """The flat keywords a settings object takes: its fields and, recursively, its groups' and nested
    options' fields."""
    names = {f.name for f in fields(settings)}
    for f in fields(settings):
        inner = getattr(settings, f.name)
        if holds_settings(f) and is_dataclass(inner) and not isinstance(inner, type):
            names |= _names(inner)
    return names


def _into_groups(settings: Any, flat: dict[str, Any]) -> dict[str, Any]:
    """The fields of `settings` that hold settings (groups, DataOptions), rebuilt with the keywords of
    `flat` each holds; a keyword none holds is a TypeError, as for any constructor."""
    rebuilt: dict[str, Any] = {}
    rest = dict(flat)
    for f in fields(settings):
        inner = getattr(settings, f.name)
        if rest and holds_settings(f) and is_dataclass(inner):
            mine = {k: rest.pop(k) for k in list(rest) if k in _names(inner)}
            if mine:
                rebuilt[f.name] = routed(inner, mine)
    if rest:
        raise TypeError(
            f"{type(settings).__name__}() got an unexpected keyword argument {next(iter(rest))!r}"
        )
    return rebuilt


def routed(settings: Any, changes: dict[str, Any]) -> Any:
    """`settings` with each keyword of `changes` set where it is held: its own field, or (by the flat
    name) the group or nested options that hold it."""
    own = {f.name for f in fields(settings)}
    direct = {k: v for k, v in changes.items() if k in own}
    settings = replace(settings, **direct) if direct else settings
    nested = _into_groups(settings, {k: v for k, v in changes.items() if k not in own})
    return replace(settings, **nested) if nested else settings


class Composed:
    """Settings built from groups. `__init__` takes the groups by name and, on top of them, any field
    of a group by its own name (so `dataclasses.replace(settings, bits=4)` works too); `settings.bits`
    reads the group that holds `bits`."""

    # flat names that may also be given by position (ValidateConfig("out_dir/"), as it always could)
    POSITIONAL: ClassVar[tuple[str, ...]] = ()

    def __init__(self, *args: Any, **given: Any) -> None:
        if len(args) > len(self.POSITIONAL):
            raise TypeError(f"{type(self).__name__}() takes {len(self.POSITIONAL)} positional arguments")
        given = {**dict(zip(self.POSITIONAL, args, strict=False)), **given}
        own = {f.name: f for f in fields(self)}  # type: ignore[arg-type]
        for name, f in own.items():
            object.__setattr__(self, name, given[name] if name in given else default_of(f))
        for name, group_value in _into_groups(self, {k: v for k, v in given.items() if k not in own}).items():
            object.__setattr__(self, name, group_value)
        self.check()

    def check(self) -> None:
        """Checks across groups (each group checks its own fields when it is made)."""

    def evolve(self, **changes: Any) -> Any:
        """A copy with fields changed by their flat names, in whichever groups hold them (what
        `dataclasses.replace(settings, bits=4)` does too, spelled so that a type checker lets it by)."""
        return routed(self, changes)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        for f in fields(self):  # type: ignore[arg-type]
            if f.metadata.get(GROUP) and f.name in self.__dict__:
                try:
                    return getattr(self.__dict__[f.name], name)
                except AttributeError:
                    continue
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def flat(self) -> dict[str, Any]:
        """Every field by its flat name, nested options as dicts (the manifest's `settings`)."""
        result: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Composed):
                result.update(value.flat())
            elif f.metadata.get(GROUP):
                result.update(asdict(value))
            else:
                result[f.name] = value
        return result


# --- reading settings back from JSON (the manifest's `settings`) -----------------------------------


def _flat_types(cls: type) -> dict[str, Any]:
    """Every flat name a settings class takes (its groups' fields by their own names), and its type."""
    hints = typing.get_type_hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if f.metadata.get(GROUP):
            out.update(_flat_types(hints[f.name]))
        else:
            out[f.name] = hints[f.name]
    return out


def _from_json(hint: Any, value: Any) -> Any:
    """A JSON value as a field typed `hint` holds it: a dataclass (DataOptions, InputSpec) from its
    object, a tuple from a list (item by item), a Path from its text; others as they are."""
    if value is None:
        return None
    args = typing.get_args(hint)
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [a for a in args if a is not type(None)]
        return _from_json(kinds[0], value) if len(kinds) == 1 else value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v) for v in value)
        return tuple(_from_json(a, v) for a, v in zip(args, value, strict=False))
    if isinstance(hint, type) and is_dataclass(hint) and isinstance(value, dict):
        inner = typing.get_type_hints(hint)
        return hint(**{k: _from_json(inner[k], v) for k, v in value.items() if k in inner})
    if hint is Path:
        return Path(value)
    return value


def from_flat(cls: type, flat: dict[str, Any], where: str) -> Any:
    """`cls` from the flat JSON `Composed.flat()` wrote (the manifest's `settings`), each value turned
    back into its field's type. A name `cls` does not take (from a newer qconvert) is left; one it
    takes and `flat` lacks (a setting added since) is its default; a value the settings refuse is a
    SourceError naming `where` (e.g. `qconvert.json: settings`)."""
    known = _flat_types(cls)
    try:
        return cls(**{k: _from_json(known[k], v) for k, v in flat.items() if k in known})
    except (ConfigError, TypeError, ValueError) as e:
        raise SourceError(f"{where}: {e} Give a file written by qconvert, or re-export.") from e


# --- parsers: a flag's text -> the field's value (each error names its flag and the fix) -------------


def parse_image_size(text: str) -> tuple[int, int]:
    """`--image-size HxW` (or N for a square), in pixels."""
    parts = re.split(r"[x,]", text.strip().lower())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"--image-size {text!r} is not HxW or N (positive pixel counts). Example: --image-size 224x224 "
            "or --image-size 224"
        )
    return int(parts[0]), int(parts[1])


def parse_channel_values(text: str, flag: str) -> tuple[float, ...]:
    """`--mean` / `--std`: comma-separated numbers, one per channel or one for all channels. They
    apply after pixels are scaled to [0, 1], so ImageNet's are 0.485,0.456,0.406 / 0.229,0.224,0.225."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v == v and abs(v) != float("inf") for v in values):
        raise ConfigError(
            f"{flag} {text!r} is not a comma-separated list of numbers, one per channel or one for all. "
            f"Example: {flag} 0.485,0.456,0.406 (on pixels scaled to [0, 1])"
        )
    if flag == "--std" and any(v <= 0 for v in values):
        raise ConfigError(f"--std {text!r}: every value must be greater than 0 (inputs are divided by it).")
    return values


def parse_layout(text: str) -> str:
    """`--layout nchw|nhwc`: where the channel axis of an image input sits."""
    layout = text.strip().lower()
    if layout not in IMAGE_LAYOUTS:
        raise ConfigError(f"--layout {text!r} is not a layout. Valid: {', '.join(IMAGE_LAYOUTS)}")
    return layout


def parse_target_option(text: str) -> tuple[str, str]:
    """`--target-option NAME=VALUE`."""
    name, sep, value = text.partition("=")
    if not sep or not name.strip():
        raise ConfigError(f"--target-option {text!r} is not NAME=VALUE. Example: --target-option device=GPU")
    return name.strip(), value.strip()


def parse_probe_option(text: str) -> tuple[str, str]:
    """`--probe-option KEY=VALUE`; the probe checks the key and the value."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--probe-option {text!r} is not KEY=VALUE. Example: --probe-option token=5")
    return key.strip(), value.strip()


def parse_recover(values: Sequence[str]) -> tuple[str, ...] | None:
    """--recover values (repeatable, comma-separated): None when not given (the family's defaults),
    () for `none`, else the step names in order."""
    names = [name.strip() for value in values for name in value.split(",") if name.strip()]
    if not names:
        return None
    if "none" in names:
        if len(names) > 1:
            raise ConfigError("--recover none turns every recovery step off: give it alone, or name steps.")
        return ()
    return tuple(names)


def bits_from_text(text: str) -> tuple[int, ...]:
    """`--bits 16,8,4` -> (16, 8, 4); SweepSettings checks the values themselves."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    if not items:
        raise ConfigError("--bits: give at least one bit width, e.g. --bits 16,8,4")
    bad = [t for t in items if not t.isdigit()]
    if bad:
        raise ConfigError(
            f"--bits {text!r}: {bad[0]!r} is not a bit width. Give comma-separated numbers from "
            f"{', '.join(map(str, choices.bits()))}, e.g. --bits 16,8,4"
        )
    return tuple(int(t) for t in items)


def modes_from_text(text: str) -> tuple[str, ...]:
    """`--modes static,dynamic` -> ("static", "dynamic"); SweepSettings checks the names."""
    items = tuple(t.strip() for t in text.split(",") if t.strip())
    if not items:
        raise ConfigError(
            f"--modes: give at least one mode, e.g. --modes static,dynamic. Valid: {', '.join(choices.modes())}"
        )
    return items


def _joined(values: Sequence[Any]) -> list[str]:
    return [",".join(map(str, values))]


def _input_text(spec: InputSpec) -> str:
    return f"{spec.name}:{'x'.join(map(str, spec.shape))}:{spec.dtype}"


def _g(value: float) -> list[str]:
    return [f"{value:g}"]


# --- checks shared by several groups ----------------------------------------------------------------


def check_bits(bits: int) -> None:
    """--bits must be a bit width some target takes (qconvert.choices.bits)."""
    if bits not in choices.bits():
        raise ConfigError(f"--bits {bits} is not supported. Valid: {', '.join(map(str, choices.bits()))}")


def check_weight_only_4bit(bits: int, block_size: int, algorithm: str) -> None:
    """--block-size must be a power of two from MIN_BLOCK_SIZE and --algorithm one the quantizers take
    (qconvert.choices.weight_algorithms); both belong to --bits 4 (MatMulNBits), so a non-default value
    at other bit widths is refused."""
    if block_size < MIN_BLOCK_SIZE or block_size & (block_size - 1):
        raise ConfigError(
            f"--block-size {block_size}: must be a power of two, {MIN_BLOCK_SIZE} or more (onnxruntime's "
            f"MatMulNBits takes 16, 32, 64, 128, 256). Default: {DEFAULT_BLOCK_SIZE}."
        )
    if algorithm not in choices.weight_algorithms():
        raise ConfigError(
            f"--algorithm {algorithm!r} is not supported. Valid: {', '.join(choices.weight_algorithms())}"
        )
    if bits != 4 and (block_size != DEFAULT_BLOCK_SIZE or algorithm != "rtn"):
        raise ConfigError(
            f"--block-size and --algorithm apply to --bits 4 (4-bit weight-only, MatMulNBits); this run is "
            f"--bits {bits}. Drop them, or use --bits 4 --mode weight-only."
        )


def _plain_paths(config: object, as_path: tuple[str, ...] = (), as_text: tuple[str, ...] = ()) -> None:
    """Let the Python API take `str` or any `os.PathLike` for every path (issue 14): fields typed Path
    become Path, fields that hold a path inside text (SOURCE, DATA) become str. Frozen: set in place."""
    for name in as_path:
        value = getattr(config, name)
        if value is not None and not isinstance(value, Path):
            object.__setattr__(config, name, Path(os.fspath(value)))
    for name in as_text:
        value = getattr(config, name)
        if value is not None and not isinstance(value, str) and isinstance(value, os.PathLike):
            object.__setattr__(config, name, os.fspath(value))


def _at_least(flag_name: str, value: float | None, low: float, unit: str = "") -> None:
    if value is not None and value < low:
        raise ConfigError(f"{flag_name} must be at least {low:g}{unit} (got {value})")


# --- the groups -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceSettings:
    """What model, and how it becomes fp32 ONNX."""

    source: str | None = flag(None, name="", rank=0)  # None: the built-in default model
    inputs: tuple[InputSpec, ...] = flag(
        (), name="--input", parse=InputSpec.parse, many=True, show=each(_input_text), rank=90
    )
    # --task: what a Hugging Face folder is exported for (e.g. feature-extraction, text-generation);
    # None: detected from its config.json
    task: str | None = flag(None, name="--task", rank=17)
    opset: int = flag(DEFAULT_OPSET, name="--opset", parse=int, always=True, rank=91)

    def __post_init__(self) -> None:
        _plain_paths(self, (), ("source",))
        if not 7 <= self.opset <= 23:
            raise ConfigError(f"--opset {self.opset} is outside the range qconvert supports (7..23)")


@dataclass(frozen=True)
class DataOptions:
    """How DATA that is not already arrays becomes feed dicts (image folders, text files).

    Shared by `--calibration` and `--data`; each reader checks the fields it needs and ignores the
    rest. Arrays (.npz/.npy) ignore all of them."""

    # image folders: resize to HxW, scale to [0, 1], then (x - mean) / std per channel, in layout
    image_size: tuple[int, int] | None = flag(  # None: the model input's own H and W
        None, name="--image-size", parse=parse_image_size, show=lambda v: ["x".join(map(str, v))], rank=13
    )
    mean: tuple[float, ...] | None = flag(  # per channel; None: no mean subtracted
        None, name="--mean", parse=lambda t: parse_channel_values(t, "--mean"), show=_joined, rank=14
    )
    std: tuple[float, ...] | None = flag(  # per channel; None: no division
        None, name="--std", parse=lambda t: parse_channel_values(t, "--std"), show=_joined, rank=15
    )
    layout: str = flag("nchw", name="--layout", parse=parse_layout, rank=16)  # nchw | nhwc
    # text files (one sample per line): the tokenizer and how sequences are shaped
    # file.py:fn / module:fn, or a Hugging Face folder; None: the source's
    tokenizer: str | None = flag(None, name="--tokenizer", rank=18)
    # pad/truncate to this many tokens; None: the tokenizer's default
    max_length: int | None = flag(None, name="--max-length", parse=int, rank=19)
    padding: str = flag("max_length", name="--padding", rank=20)  # max_length | longest
    truncation: bool = flag(True, name="--truncation", negative="--no-truncation", rank=21)

    def __post_init__(self) -> None:
        _at_least("--max-length", self.max_length, 1, " token")
        if self.padding not in TEXT_PADDING:
            raise ConfigError(
                f"--padding {self.padding!r} is not a padding. Valid: max_length (every sample padded to "
                "--max-length) or longest (to the longest sample in the file)"
            )
        if self.layout not in IMAGE_LAYOUTS:
            raise ConfigError(f"--layout {self.layout!r} is not a layout. Valid: {', '.join(IMAGE_LAYOUTS)}")


@dataclass(frozen=True)
class DataSettings:
    """Calibration and held-out data."""

    calibration: str | None = flag(None, name="--calibration", rank=4)  # None: the built-in model's set
    data: str | None = flag(None, name="--data", rank=5)  # held-out; None: built-in set, or a split
    samples: int | None = flag(None, name="--samples", parse=int, rank=6)  # calibration samples; None: all
    data_options: DataOptions = field(default_factory=DataOptions)  # image folders and text files

    def __post_init__(self) -> None:
        _plain_paths(self, (), ("calibration", "data"))
        _at_least("--samples", self.samples, 1)


def _is_4bit(group: QuantizeSettings) -> bool:
    return group.bits == 4


@dataclass(frozen=True)
class QuantizeSettings:
    """How the model is quantized (the target turns these into a QuantizeConfig)."""

    bits: int = flag(DEFAULT_BITS, name="--bits", parse=int, always=True, rank=1)
    mode: str | None = flag(None, name="--mode", rank=3)  # None: the target's default for these bits
    # None: the model family's (qconvert.recover.defaults: mse for depthwise conv nets), else minmax
    calibration_method: str | None = flag(None, name="--calibration-method", rank=23)
    # --placement: where static int8 puts its Q/DQ pairs (quantize.placement); None: the family's
    placement: str | None = flag(None, name="--placement", rank=24)
    # --exclude / --include selectors: [name:|op:|module:]GLOB or re:REGEX
    exclude: tuple[str, ...] = flag((), name="--exclude", many=True, show=list, rank=9)
    include: tuple[str, ...] = flag((), name="--include", many=True, show=list, rank=10)
    # --block-size / --algorithm: 4-bit weight-only only (quantize.int4.WEIGHT_ALGORITHMS)
    block_size: int = flag(
        DEFAULT_BLOCK_SIZE, name="--block-size", parse=int, always=True, when=_is_4bit, rank=11
    )
    weight_algorithm: str = flag("rtn", name="--algorithm", always=True, when=_is_4bit, rank=12)
    # --recover: accuracy-recovery steps (qconvert.recover.RECOVERY names), run in pipeline order
    # (Recovery.order): `pre` steps before quantization, `post` steps after it; None: the family's defaults
    # (qconvert.recover.defaults), () (`--recover none`): none
    recover: tuple[str, ...] | None = flag(
        None, name="--recover", parse=parse_recover, show=lambda v: [",".join(v) or "none"], rank=26
    )

    def __post_init__(self) -> None:
        check_bits(self.bits)
        if self.mode is not None and self.mode not in choices.modes():
            raise ConfigError(f"--mode {self.mode!r} is not a mode. Valid: {', '.join(choices.modes())}")
        if (
            self.calibration_method is not None
            and self.calibration_method not in choices.calibration_methods()
        ):
            raise ConfigError(
                f"--calibration-method {self.calibration_method!r} is not supported. "
                f"Valid: {', '.join(choices.calibration_methods())}"
            )
        if self.placement is not None and self.placement not in choices.placements():
            raise ConfigError(
                f"--placement {self.placement!r} is not a placement. Valid: {', '.join(choices.placements())}"
            )
        check_weight_only_4bit(self.bits, self.block_size, self.weight_algorithm)


@dataclass(frozen=True)
class TargetSettings:
    """What the model is quantized for."""

    target: str = flag(DEFAULT_TARGET, name="--target", always=True, rank=2)
    # --target-option NAME=VALUE, checked by the target
    target_options: tuple[tuple[str, str], ...] = flag(
        (), name="--target-option", parse=parse_target_option, many=True, show=each("=".join), rank=25
    )


def _auto(group: CheckSettings) -> bool:
    return group.auto


@dataclass(frozen=True)
class CheckSettings:
    """How the result is checked: the tolerance and its confidence, latency, --auto's search."""

    tolerance: str | None = flag(None, name="--tolerance", rank=7)
    confidence: float = flag(DEFAULT_CONFIDENCE, name="--confidence", parse=float, show=_g, rank=8)
    latency_repeats: int = api_only(DEFAULT_LATENCY_REPEATS)
    latency_batch: int = flag(DEFAULT_LATENCY_BATCH, name="--latency-batch", parse=int, rank=22)
    # --auto: when validation fails, add recovery steps, then keep the most sensitive nodes in float
    auto: bool = flag(False, name="--auto", rank=27)
    # --auto-budget: most nodes kept in float; None: 10 or 25% of the quantized nodes, the smaller
    auto_budget: int | None = flag(None, name="--auto-budget", parse=int, when=_auto, rank=28)
    # --auto-seconds: time --auto may spend on recovery attempts before it keeps layers in float
    auto_seconds: float = flag(
        DEFAULT_AUTO_SECONDS, name="--auto-seconds", parse=float, show=_g, when=_auto, rank=29
    )
    # per-layer sensitivity: held-out samples it runs on, and how many nodes (worst cumulative SQNR
    # first) get an isolated measurement (one quantization each)
    sensitivity_samples: int = api_only(DEFAULT_SENSITIVITY_SAMPLES)
    sensitivity_isolated: int = api_only(DEFAULT_SENSITIVITY_ISOLATED)

    def __post_init__(self) -> None:
        check_confidence(self.confidence)
        if self.latency_repeats < 1 or self.latency_batch < 1:
            raise ConfigError("latency_repeats and --latency-batch must be at least 1")
        if self.auto_budget is not None and self.auto_budget < 0:
            raise ConfigError(f"--auto-budget must be 0 or more nodes (got {self.auto_budget})")
        if self.sensitivity_samples < 1 or self.sensitivity_isolated < 0:
            raise ConfigError("sensitivity_samples must be at least 1 and sensitivity_isolated at least 0")
        if self.tolerance:
            parse_tolerance(self.tolerance)  # fail early on a malformed --tolerance


@dataclass(frozen=True)
class OutputSettings:
    """Where the artifacts go."""

    out_dir: Path | None = flag(
        None, name="-o", parse=Path, always=True, rank=99
    )  # None: DEFAULT_OUT_ROOT / ...
    force: bool = flag(False, name="--force", in_command=False)  # replace an existing output folder

    def __post_init__(self) -> None:
        _plain_paths(self, ("out_dir",))


# --- what each command does, as one value -----------------------------------------------------------


@dataclass(frozen=True, init=False)
class ExportSettings(Composed):
    """Everything `qconvert export` does, as one value (public name: RunConfig). The CLI builds exactly
    this; `RunConfig(source=..., bits=4)` and `config.bits` work on the flat names."""

    model: SourceSettings = group(SourceSettings)
    datasets: DataSettings = group(DataSettings)
    quantization: QuantizeSettings = group(QuantizeSettings)
    hardware: TargetSettings = group(TargetSettings)
    checks: CheckSettings = group(CheckSettings)
    output: OutputSettings = group(OutputSettings)

    def check(self) -> None:
        given = Tolerance.for_bits(self.quantization.bits, self.checks.tolerance)
        validate_only = sorted({b.metric for b in given.bounds if b.explicit and b.metric in MODEL_METRICS})
        if validate_only:
            raise ConfigError(
                f"--tolerance: {', '.join(validate_only)} is measured by `qconvert validate` (task_drop: "
                "--metric, speedup: --require-speedup, collapse_rate: --probe collapse), not by export. "
                "Drop it here and gate the exported folder with `qconvert validate OUT_DIR`."
            )

    def to_argv(self, out_dir: Path) -> list[str]:
        """The `qconvert export` command line that makes this run (the manifest's `command`)."""
        return to_argv(replace(self, output=replace(self.output, out_dir=out_dir)), "export")


def _sweep_base() -> ExportSettings:
    return ExportSettings(calibration_method="minmax")  # a sweep compares formats, not family defaults


@dataclass(frozen=True, init=False)
class SweepSettings(Composed):
    """Everything `qconvert sweep` does, as one value (public name: SweepConfig): one export per (bits,
    mode) trial, each `replace(base, bits=..., mode=..., out_dir=...)`. `base.output` is the sweep's
    folder. The flat names of the base work here too (`SweepConfig(source=..., bits=(8, 4))`)."""

    base: ExportSettings = group(_sweep_base)
    bits: tuple[int, ...] = flag(factory=choices.bits, name="--bits", parse=bits_from_text, show=_joined)
    modes: tuple[str, ...] | None = flag(None, name="--modes", parse=modes_from_text, show=_joined)
    # local executor; None: one per core, at most 4 and one per trial
    workers: int | None = flag(None, name="--workers", parse=int)
    executor: str = flag("local", name="--executor")  # local | ray
    # --ray-address; None: ray.init()'s default (RAY_ADDRESS, a local `ray start`, else a new local Ray)
    ray_address: str | None = flag(None, name="--ray-address")

    def check(self) -> None:
        if not self.bits:
            raise ConfigError("--bits: give at least one bit width, e.g. --bits 16,8,4")
        for bits in self.bits:
            if bits not in choices.bits():
                raise ConfigError(
                    f"--bits {bits} is not a bit width qconvert knows. Valid: {', '.join(map(str, choices.bits()))} "
                    "(comma-separated, e.g. --bits 16,8,4)"
                )
        if len(set(self.bits)) < len(self.bits):
            raise ConfigError(f"--bits {','.join(map(str, self.bits))}: a bit width is listed twice")
        if self.modes is not None:
            if not self.modes:
                raise ConfigError("--modes: give at least one mode, e.g. --modes static,dynamic")
            for mode in self.modes:
                if mode not in choices.modes():
                    raise ConfigError(f"--modes: {mode!r} is not a mode. Valid: {', '.join(choices.modes())}")
        self._check_executor()
        for bits in self.bits:  # fail early on a malformed --tolerance
            Tolerance.for_bits(bits, self.base.checks.tolerance)

    def _check_executor(self) -> None:
        if self.executor not in EXECUTORS:
            raise ConfigError(
                f"--executor {self.executor!r} is not an executor. Valid: {', '.join(EXECUTORS)}"
            )
        _at_least("--workers", self.workers, 1)
        if self.ray_address is not None and self.executor != "ray":
            raise ConfigError("--ray-address needs --executor ray")
        if self.workers is not None and self.executor == "ray":
            raise ConfigError(
                "--workers is for the local executor: on Ray each trial reserves one CPU and Ray decides "
                "how many run at once. Drop --workers, or size the cluster with `ray start --num-cpus N`."
            )

    def to_argv(self) -> list[str]:
        """The `qconvert sweep` command line that makes this sweep."""
        return to_argv(self, "sweep")


@dataclass(frozen=True)
class CandidateSettings:
    """What `qconvert validate` compares: the candidate, its reference, the bit width of its defaults."""

    candidate: str | Path = flag("", name="", rank=0)  # an .onnx file, or an OUT_DIR from `qconvert export`
    # .onnx or a torch SOURCE; None: the OUT_DIR's reference.onnx
    reference: str | None = flag(None, name="--reference")
    # picks the default tolerances; None: the manifest's, else DEFAULT_BITS
    bits: int | None = flag(None, name="--bits", parse=int)

    def __post_init__(self) -> None:
        _plain_paths(self, (), ("reference",))
        if not isinstance(self.candidate, (str, Path)):
            object.__setattr__(self, "candidate", Path(self.candidate))
        if self.bits is not None:
            check_bits(self.bits)


@dataclass(frozen=True)
class HeldoutSettings:
    """The held-out data `qconvert validate` runs both models on."""

    data: str | None = flag(None, name="--data")  # None: the OUT_DIR's validation data, if it is a file
    data_options: DataOptions = field(default_factory=DataOptions)  # image folders and text files
    # the candidate's calibration data, to warn when --data is it; None: the manifest's
    calibration_data: str | None = flag(None, name="--calibration-data")

    def __post_init__(self) -> None:
        _plain_paths(self, (), ("data", "calibration_data"))


@dataclass(frozen=True)
class GateSettings:
    """What `qconvert validate` checks beyond the outputs: the tolerance, a task metric, probes, speed."""

    tolerance: str | None = flag(None, name="--tolerance")  # overrides the tolerance file and defaults
    confidence: float = flag(DEFAULT_CONFIDENCE, name="--confidence", parse=float, show=_g)
    # file.py:fn or module:fn, fn(outputs, labels) -> float, higher = better
    metric: str | None = flag(None, name="--metric")
    require_speedup: bool = flag(False, name="--require-speedup")  # faster than the reference ONNX
    probes: tuple[str, ...] = flag((), name="--probe", many=True, show=list)  # --probe NAME (PROBES)
    # --probe-option KEY=VALUE, checked by the probe
    probe_options: tuple[tuple[str, str], ...] = flag(
        (), name="--probe-option", parse=parse_probe_option, many=True, show=each("=".join)
    )
    # where qconvert.toml / pyproject.toml are looked for; None: tolerance files are not read
    settings_dir: Path | None = api_only(Path())
    latency_repeats: int = api_only(DEFAULT_LATENCY_REPEATS)
    latency_batch: int = api_only(DEFAULT_LATENCY_BATCH)

    def __post_init__(self) -> None:
        _plain_paths(self, ("settings_dir",), ("metric",))
        if self.latency_repeats < 1 or self.latency_batch < 1:
            raise ConfigError("latency_repeats and latency_batch must be at least 1")
        unknown = [p for p in self.probes if p not in PROBES]
        if unknown:
            raise ConfigError(f"--probe {unknown[0]!r} is not a probe. Valid: {', '.join(PROBES)}")
        if self.probe_options and not self.probes:
            raise ConfigError("--probe-option applies to a probe: add --probe collapse.")
        check_confidence(self.confidence)
        if self.tolerance:
            parse_tolerance(self.tolerance)  # fail early on a malformed --tolerance


@dataclass(frozen=True)
class ReportSettings:
    """Where `qconvert validate` writes its reports."""

    json_out: Path | None = flag(None, name="--json", parse=Path)  # '-' (the CLI): stdout
    junit_out: Path | None = flag(None, name="--junit", parse=Path)
    html_out: Path | None = flag(None, name="--html", parse=Path)
    force: bool = flag(False, name="--force")  # replace existing --json / --junit / --html files

    def __post_init__(self) -> None:
        _plain_paths(self, ("json_out", "junit_out", "html_out"))


@dataclass(frozen=True, init=False)
class ValidateSettings(Composed):
    """Everything `qconvert validate` does, as one value (public name: ValidateConfig)."""

    POSITIONAL = ("candidate",)

    subject: CandidateSettings = group(CandidateSettings)
    heldout: HeldoutSettings = group(HeldoutSettings)
    gate: GateSettings = group(GateSettings)
    reports: ReportSettings = group(ReportSettings)

    def check(self) -> None:
        if self.subject.candidate == "":
            raise TypeError("ValidateConfig() needs candidate: an .onnx file or an OUT_DIR")

    def to_argv(self) -> list[str]:
        """The `qconvert validate` command line that makes this check."""
        return to_argv(self, "validate")


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything `qconvert benchmark` does, as one value (public name: BenchmarkConfig).

    `model` and `vs` are .onnx files or folders written by `qconvert export`; a folder alone (no
    `vs`) compares its model.onnx against its reference.onnx, a folder given as `vs` stands for its
    model.onnx."""

    model: Path = flag(name="", parse=Path, rank=0)
    vs: Path | None = flag(None, name="--vs", parse=Path)
    data: str | None = flag(None, name="--data")  # .npz/.npy (first --batch samples); None: seeded random
    batch: int = flag(DEFAULT_BENCHMARK_BATCH, name="--batch", parse=int)
    repeats: int = flag(DEFAULT_BENCHMARK_REPEATS, name="--repeats", parse=int)
    threads: int | None = flag(None, name="--threads", parse=int)  # intra-op threads; None: onnxruntime's
    memory: bool = api_only(True)  # measure peak memory (one child process per model, plus a baseline)

    def __post_init__(self) -> None:
        _plain_paths(self, ("model", "vs"), ("data",))
        for flag_name, value in (
            ("--batch", self.batch),
            ("--repeats", self.repeats),
            ("--threads", self.threads),
        ):
            _at_least(flag_name, value, 1)

    def to_argv(self) -> list[str]:
        """The `qconvert benchmark` command line that measures this."""
        return to_argv(self, "benchmark")


# the public names (qconvert.__all__, the README's Python section)
RunConfig = ExportSettings
SweepConfig = SweepSettings
ValidateConfig = ValidateSettings
BenchmarkConfig = BenchmarkSettings
