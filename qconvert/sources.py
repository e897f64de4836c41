"""SOURCE -> LoadedModel: a PyTorch module (or an ONNX file) with example inputs and names.

Forms of SOURCE: `path/file.py:factory`, `package.module:factory`, a `.onnx` file, a TorchScript
archive, a `torch.export` archive (`.pt2`), or None for the built-in default model. A plain
pickle is loaded weights-only, so it can never run code; a full pickled module is refused.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import logging
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qconvert.errors import ConfigError, QConvertError, SourceError, brief
from qconvert.prepare import TransformerFusion
from qconvert.types import InputSpec

log = logging.getLogger(__name__)

DEFAULT_MODEL = "digits_cnn"


@dataclass(frozen=True)
class BuiltinModel:
    name: str
    factory: str  # file name under models/, ":" factory name
    calibration: str  # file name under calibration/
    heldout: str


BUILTIN_MODELS = {
    "digits_cnn": BuiltinModel(
        "digits_cnn", "digits_cnn.py:digits_cnn", "digits_calib.npz", "digits_heldout.npz"
    ),
    "copycount": BuiltinModel(
        "copycount", "copycount.py:copycount", "copycount_calib.npz", "copycount_heldout.npz"
    ),
}


def zoo_root() -> Path:
    """Where `models/` and `calibration/` live: inside the installed package, or the source tree."""
    here = Path(__file__).resolve().parent
    for root in (here / "_zoo", here.parent):
        if (root / "models").is_dir() and (root / "calibration").is_dir():
            return root
    raise SourceError(
        "the built-in models were not found next to the qconvert package. Install qconvert from a "
        "source checkout (pip install .), or pass a SOURCE."
    )


@dataclass
class LoadedModel:
    """A model ready to export: what it is, where it came from, and how to call it."""

    name: str
    kind: str  # builtin | factory | onnx | torchscript | exported-program | huggingface
    origin: str
    files: tuple[Path, ...]
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    example_inputs: tuple[np.ndarray, ...]
    # per input, its dims with None where any size is accepted (always the batch axis)
    input_dims: tuple[tuple[int | None, ...], ...] = ()
    module: Any = None  # a callable torch module for torch sources
    exported_program: Any = None
    onnx_path: Path | None = None
    default_calibration: Path | None = None
    default_data: Path | None = None
    notes: list[str] = field(default_factory=list)
    # text models (Hugging Face folders, see qconvert/huggingface.py)
    task: str | None = None  # what a Hugging Face folder is exported for, e.g. feature-extraction
    tokenizer: str | None = None  # what reads text DATA when --tokenizer is not given (an HF folder)
    fusion: TransformerFusion | None = None  # transformer fusions the prepare stage may apply
    token_outputs: dict[str, str] = field(default_factory=dict)  # output -> metrics.TokenOutputs kind
    companion_files: tuple[Path, ...] = ()  # copied into OUT_DIR beside model.onnx (config, tokenizer)

    def __post_init__(self) -> None:
        if not self.input_dims:
            self.input_dims = tuple((None, *a.shape[1:]) if a.ndim else () for a in self.example_inputs)

    @property
    def is_torch(self) -> bool:
        return self.module is not None

    def run_torch(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run the PyTorch module on numpy feeds (keyed by input name); return numpy outputs."""
        import torch

        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.input_names]
        with torch.no_grad():
            out = self.module(*args)
        return [t.detach().cpu().numpy() for t in _flatten_outputs(out, self.origin)]


def load_source(
    source: str | None, inputs: tuple[InputSpec, ...] = (), task: str | None = None
) -> LoadedModel:
    """Resolve SOURCE and load it without running untrusted pickles. `task` (`--task`) is for Hugging
    Face folders only."""
    if task is not None and not (source and (Path(source) / "config.json").is_file()):
        raise ConfigError(
            f"--task {task}: only a Hugging Face model folder (one with config.json) takes a task; SOURCE "
            f"{source or '(the built-in model)'} is not one. Drop --task."
        )
    if source is None:
        return _load_builtin(DEFAULT_MODEL, inputs)
    if source in BUILTIN_MODELS:
        return _load_builtin(source, inputs)
    path_part, _, attr = source.rpartition(":")
    if path_part and attr.isidentifier() and not Path(source).exists():
        return _load_factory(source, path_part, attr, inputs)
    path = Path(source)
    if not path.exists():
        raise SourceError(
            f"SOURCE {source}: no such file. Give a .onnx file, a TorchScript or torch.export archive, "
            "path/file.py:factory or package.module:factory."
        )
    if path.is_dir():
        if (path / "config.json").is_file():
            from qconvert.huggingface import load_hf_folder

            return load_hf_folder(path, task, inputs)
        raise SourceError(
            f"SOURCE {source}: is a folder with no config.json, so neither a model file nor a Hugging Face "
            "model folder. Give the folder that holds config.json and the weights, or a model file."
        )
    if path.suffix == ".onnx":
        refuse_quantized_onnx(path)
        return _load_onnx(path, inputs)
    if path.suffix == ".py":
        raise SourceError(_no_factory_message(path))
    return _load_torch_archive(path, inputs)


# --- SOURCE slips: diagnosed before any work -------------------------------------------------

# ops that only a quantized graph holds (a QLinear* op is matched by its prefix)
QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "MatMulNBits",
        "DynamicQuantizeMatMul",
        "QGemm",
        "QAttention",
    }
)


def quantized_ops(model: Any) -> dict[str, int]:
    """op type -> count, for the ops in `model`'s graph that mean it is quantized already."""
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type in QUANTIZED_OPS or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def refuse_quantized_onnx(path: Path) -> None:
    """An already-quantized .onnx as SOURCE would fail deep in the quantizer (an SSA error from
    onnx.checker); say what it is up front, and what to give instead."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return  # _load_onnx explains an unreadable file
    found = quantized_ops(model)
    if found:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(found.items(), key=lambda kv: -kv[1]))
        raise SourceError(
            f"SOURCE {path}: is quantized already ({ops}); qconvert quantizes an fp32 model. Give the fp32 "
            f".onnx it was made from (an OUT_DIR's reference.onnx), or check this one as it is with "
            f"`qconvert validate {path} --reference FP32.onnx --data DATA`."
        )


def _no_factory_message(path: Path) -> str:
    """`export model.py` without `:factory`: name the callables there, read without running the file."""
    import ast

    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except (SyntaxError, UnicodeDecodeError, OSError) as e:
        return f"SOURCE {path}: a Python file needs `:factory` (path/file.py:factory), and this one does not parse ({e})."
    names = [
        node.name
        for node in tree.body
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and not node.name.startswith("_")
    ]
    here = f"; callables here: {', '.join(names)}" if names else "; it defines no top-level function or class"
    pick = "build" if "build" in names else names[0] if names else ""
    example = f" e.g. {path}:{pick}" if names else ""
    return f"SOURCE {path}: a Python file needs the function that builds the model: add `:factory`{here}.{example}"


# --- factories -------------------------------------------------------------------------------


def _load_builtin(name: str, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    spec = BUILTIN_MODELS[name]
    root = zoo_root()
    file_name, factory = spec.factory.split(":")
    loaded = _load_factory(
        str(root / "models" / spec.factory), str(root / "models" / file_name), factory, inputs
    )
    loaded.kind = "builtin"
    loaded.name = name
    loaded.origin = f"built-in model {name}"
    loaded.files = (*loaded.files, *sorted((root / "models").glob(f"{name}*.pt")))
    loaded.default_calibration = root / "calibration" / spec.calibration
    loaded.default_data = root / "calibration" / spec.heldout
    return loaded


def import_callable(
    spec: str, *, label: str = "SOURCE", error: type[QConvertError] = SourceError
) -> tuple[Any, Callable[..., Any], tuple[Path, ...]]:
    """(module, callable, files) for `path/file.py:name` or `package.module:name`.

    The one way qconvert imports user code named on the command line (SOURCE factories, DATA
    callables); errors are `error`s whose message starts with `label` (the flag or argument)."""
    where, _, attr = spec.rpartition(":")
    module, files = _import_factory_module(spec, where, label, error)
    fn = getattr(module, attr, None)
    if not callable(fn):
        found = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise error(
            f"{label} {spec}: {where} has no callable {attr!r}. Callables there: {', '.join(found) or 'none'}."
        )
    return module, fn, files


def _import_factory_module(
    source: str, where: str, label: str = "SOURCE", error: type[QConvertError] = SourceError
) -> tuple[Any, tuple[Path, ...]]:
    if where.endswith(".py") or "/" in where or "\\" in where:
        path = Path(where)
        if not path.is_file():
            raise error(f"{label} {source}: no such file {where}. Check the path before the ':'.")
        # a name fixed by the file's path (not hash(), which changes every process): it lands in the
        # exported graph's node metadata, and the same inputs must give the same model.onnx bytes
        digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
        mod_name = f"_qconvert_source_{digest}"
        spec = importlib.util.spec_from_file_location(mod_name, path)
        if spec is None or spec.loader is None:
            raise error(f"{label} {source}: {where} cannot be imported as a Python file.")
        module = importlib.util.module_from_spec(spec)
        sys.path.insert(0, str(path.resolve().parent))
        try:
            sys.modules[mod_name] = module
            spec.loader.exec_module(module)
        except Exception as e:
            sys.modules.pop(mod_name, None)
            raise error(f"{label} {source}: importing {where} raised {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(str(path.resolve().parent))
        return module, (path,)
    try:
        module = importlib.import_module(where)
    except ImportError as e:
        raise error(
            f"{label} {source}: cannot import module {where!r} ({e}). Install it, or give path/file.py:name."
        ) from e
    except Exception as e:
        raise error(f"{label} {source}: importing {where} raised {type(e).__name__}: {e}") from e
    file = getattr(module, "__file__", None)
    return module, ((Path(file),) if file else ())


def _load_factory(source: str, where: str, attr: str, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    import torch

    module, factory, files = import_callable(source)
    try:
        model = factory()
    except Exception as e:
        raise SourceError(f"SOURCE {source}: the factory {attr}() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, torch.nn.Module):
        raise SourceError(
            f"SOURCE {source}: {attr}() returned {type(model).__name__}, not a torch.nn.Module."
        )
    model.eval()
    examples = _example_inputs(source, module, inputs)
    declared = tuple(getattr(module, "INPUT_NAMES", ()))
    names = (
        declared
        if not inputs and len(declared) == len(examples)
        else _input_names(model, inputs, len(examples))
    )
    return _finish_torch(
        name=Path(where).stem if where.endswith(".py") else where.rsplit(".", 1)[-1],
        kind="factory",
        origin=source,
        files=files,
        model=model,
        examples=examples,
        input_names=names,
        output_names=tuple(getattr(module, "OUTPUT_NAMES", ())),
    )


def _example_inputs(source: str, module: Any, inputs: tuple[InputSpec, ...]) -> tuple[np.ndarray, ...]:
    if inputs:
        return tuple(_zeros_for(spec) for spec in inputs)
    make = getattr(module, "example_inputs", None)
    if make is None:
        raise SourceError(
            f"SOURCE {source}: no example inputs. Add an example_inputs() function beside the factory, "
            "or pass --input NAME:SHAPE[:DTYPE] once per model input (e.g. --input x:1x3x32x32)."
        )
    try:
        made = make()
    except Exception as e:
        raise SourceError(f"SOURCE {source}: example_inputs() raised {type(e).__name__}: {e}") from e
    return tuple(_to_numpy(t, source) for t in (made if isinstance(made, (tuple, list)) else (made,)))


def _zeros_for(spec: InputSpec) -> np.ndarray:
    return np.zeros(spec.shape, dtype=np.dtype(spec.dtype))


def _to_numpy(value: Any, source: str) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    try:
        return value.detach().cpu().numpy()
    except AttributeError:
        raise SourceError(
            f"SOURCE {source}: example inputs must be tensors or arrays, got {type(value).__name__}."
        ) from None


def _input_names(model: Any, inputs: tuple[InputSpec, ...], count: int) -> tuple[str, ...]:
    if inputs:
        return tuple(s.name for s in inputs)
    try:
        params = [
            p.name
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    if len(params) >= count:
        return tuple(params[:count])
    return tuple(f"input_{i}" for i in range(count)) if count > 1 else ("input",)


def _flatten_outputs(out: Any, origin: str) -> list[Any]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in out):
        return list(out)
    raise SourceError(
        f"SOURCE {origin}: forward returned {type(out).__name__}; qconvert needs a tensor or a tuple of "
        "tensors. Wrap the model so forward returns tensors."
    )


def _finish_torch(
    *,
    name: str,
    kind: str,
    origin: str,
    files: tuple[Path, ...],
    model: Any,
    examples: tuple[np.ndarray, ...],
    input_names: tuple[str, ...],
    output_names: tuple[str, ...] = (),
    exported_program: Any = None,
) -> LoadedModel:
    loaded = LoadedModel(
        name=name,
        kind=kind,
        origin=origin,
        files=files,
        input_names=input_names,
        output_names=(),
        example_inputs=examples,
        module=model,
        exported_program=exported_program,
    )
    try:  # run once, so a broken forward is reported as such and not as an export failure
        outs = loaded.run_torch(dict(zip(input_names, examples, strict=True)))
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(
            f"SOURCE {origin}: the model's forward raised {type(e).__name__}: {e}. Fix the model or its "
            "example inputs (check shapes and dtypes; --input overrides them)."
        ) from e
    if output_names and len(output_names) != len(outs):
        output_names = ()
    loaded.output_names = output_names or (
        ("output",) if len(outs) == 1 else tuple(f"output_{i}" for i in range(len(outs)))
    )
    return loaded


# --- archives -------------------------------------------------------------------------------


def _dims_from_spec(path: Path, dims: tuple[int | None, ...], spec: InputSpec) -> tuple[int | None, ...]:
    """The graph input's dims with the axes it leaves open fixed by `--input` (the batch axis stays
    open); an --input that contradicts the graph is refused."""
    if dims and len(dims) != len(spec.shape):
        raise SourceError(
            f"--input {spec.name}: {len(spec.shape)} axes given, but input {spec.name!r} of {path} has "
            f"{len(dims)}. Give a shape with {len(dims)} axes."
        )
    for axis, (have, want) in enumerate(zip(dims[1:], spec.shape[1:], strict=True), start=1):
        if have is not None and have != want:
            raise SourceError(
                f"--input {spec.name}: axis {axis} is {want}, but {path} fixes it at {have}. "
                "Leave that axis as the model has it."
            )
    return (None, *spec.shape[1:])


def _load_onnx(path: Path, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
        onnx.checker.check_model(str(path))
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: not a valid ONNX model ({type(e).__name__}: {brief(e)}). "
            "Re-export it, or check the file is complete."
        ) from e
    from qconvert.trust import external_data_files

    external = external_data_files(path)  # any name, checked, and named as the user's file in errors
    init = {i.name for i in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in init]
    specs = {s.name: s for s in inputs}
    unknown = set(specs) - {i.name for i in graph_inputs}
    if unknown:
        raise SourceError(
            f"--input names {sorted(unknown)} are not inputs of {path}. Its inputs: "
            f"{', '.join(i.name for i in graph_inputs)}"
        )
    examples, all_dims = [], []
    for i in graph_inputs:
        t = i.type.tensor_type
        dims = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim
        )
        if i.name in specs:
            dims = _dims_from_spec(path, dims, specs[i.name])
            all_dims.append(dims)
            examples.append(_zeros_for(specs[i.name]))
            continue
        all_dims.append(dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(t.elem_type)
        examples.append(np.zeros([d or 1 for d in dims], dtype=dtype))
    return LoadedModel(
        name=path.stem,
        kind="onnx",
        origin=str(path),
        files=(path, *external),
        input_names=tuple(i.name for i in graph_inputs),
        output_names=tuple(o.name for o in model.graph.output),
        example_inputs=tuple(examples),
        input_dims=tuple(all_dims),
        onnx_path=path,
    )


def _archive_kind(path: Path) -> str:
    if not zipfile.is_zipfile(path):
        return "pickle"
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
    if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
        return "torchscript"
    if path.suffix == ".pt2" or any(
        "serialized_exported_program" in n or n.endswith("archive_format") for n in names
    ):
        return "exported-program"
    return "pickle"


def _load_torch_archive(path: Path, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    """A TorchScript or torch.export archive; a pickle is refused (see _archive_kind)."""
    kind = _archive_kind(path)
    if kind == "torchscript":
        return _load_torchscript(path, inputs)
    if kind == "exported-program":
        return _load_exported_program(path, inputs)
    import torch

    # A pickle: weights only, never code.
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise SourceError(
            f"SOURCE {path}: refused. This file is a pickle that needs to run code to load "
            f"({brief(e, 200)}), and qconvert never runs code "
            "from a pickle. Save the model with torch.export.save(...) (a .pt2) or torch.jit.save(...), or "
            "give a path/file.py:factory that builds the module and loads its weights."
        ) from e
    raise SourceError(
        f"SOURCE {path}: holds only weights ({type(obj).__name__}), not a model. Give a path/file.py:factory "
        "that builds the module and loads these weights (torch.load(..., weights_only=True))."
    )


def _load_torchscript(path: Path, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    """A TorchScript archive; it records no input shapes, so --input gives them."""
    import torch

    try:
        model = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:
        raise SourceError(f"SOURCE {path}: cannot load this TorchScript archive: {e}") from e
    if not inputs:
        raise SourceError(
            f"SOURCE {path}: a TorchScript file does not record its input shapes. Pass --input "
            "NAME:SHAPE[:DTYPE] once per input, e.g. --input x:1x3x32x32."
        )
    examples = tuple(_zeros_for(s) for s in inputs)
    return _finish_torch(
        name=path.stem,
        kind="torchscript",
        origin=str(path),
        files=(path,),
        model=model,
        examples=examples,
        input_names=tuple(s.name for s in inputs),
    )


def _load_exported_program(path: Path, inputs: tuple[InputSpec, ...]) -> LoadedModel:
    """A torch.export archive, checked first so that no pickle in it runs code; it must have been
    exported with a dynamic batch axis."""
    import torch

    from qconvert.trust import check_torch_archive, weights_only_loads

    check_torch_archive(path)  # no pickle in it may run code; torch.export.load would run it
    try:
        with weights_only_loads():
            program = torch.export.load(str(path))
    except Exception as e:
        raise SourceError(f"SOURCE {path}: cannot load this torch.export archive: {e}") from e
    user_inputs = set(program.graph_signature.user_inputs)
    fixed = [
        node.name
        for node in program.graph.nodes
        if node.op == "placeholder"
        and node.name in user_inputs
        and getattr(node.meta.get("val"), "ndim", 0) > 0
        and isinstance(node.meta["val"].shape[0], int)  # a dynamic axis is a SymInt, not an int
    ]
    if fixed:
        raise SourceError(
            f"SOURCE {path}: this torch.export archive was exported with a fixed batch size (input(s) "
            f"{', '.join(fixed)}), and qconvert exports with a dynamic batch axis. Re-export it with "
            "torch.export.export(model, args, dynamic_shapes=...) giving axis 0 of each input "
            "torch.export.Dim('batch') (and an example batch of 2 or more), or give path/file.py:factory."
        )
    stored = getattr(program, "example_inputs", None)
    if inputs:
        examples = tuple(_zeros_for(s) for s in inputs)
    elif stored and stored[0]:
        examples = tuple(_to_numpy(t, str(path)) for t in stored[0])
    else:
        raise SourceError(f"SOURCE {path}: no example inputs stored; pass --input NAME:SHAPE[:DTYPE].")
    names = tuple(s.name for s in inputs) or tuple(
        spec.arg.name
        for spec in program.graph_signature.input_specs
        if spec.kind == torch.export.graph_signature.InputKind.USER_INPUT
    )
    return _finish_torch(
        name=path.stem,
        kind="exported-program",
        origin=str(path),
        files=(path,),
        model=program.module(),
        examples=examples,
        input_names=names,
        exported_program=program,
    )
