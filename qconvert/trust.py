"""What qconvert trusts, in one place: nothing a model file or an artifact folder says is executed,
and an artifact is measured only once every file its manifest records has been verified.

- `check_torch_archive` reads every pickle inside a `torch.export` archive (`.pt2`) opcode by
  opcode, without running it, and refuses the archive unless each one only rebuilds plain tensors
  and containers; compiled code (AOTInductor) and pickled Python objects are refused outright.
- `data_named_by_manifest` keeps `validate` from importing a `file.py:fn` an artifact's manifest
  names: only callables given on the command line run.
- `verify_artifact` checks the SHA-256 of every file qconvert.json records and returns the
  manifest's own SHA-256 (for a signature or a CI log).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pickletools
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from qconvert.errors import CalibrationError, ConfigError, SourceError

if TYPE_CHECKING:
    from qconvert.results import Manifest

log = logging.getLogger(__name__)

# --- pickles inside torch archives -----------------------------------------------------------------

# The globals a pickle of plain tensors, parameters and containers refers to (what torch.save writes for
# a tensor, a dict or a tuple of them). Calling any of these builds data; none runs user code.
_SAFE_GLOBALS = {
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor_v3"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"),
    ("torch", "device"),
    ("_codecs", "encode"),  # how protocol 2 writes a bytes object
    ("builtins", "set"),
    ("builtins", "frozenset"),
}
_DTYPES = {
    "float16", "float32", "float64", "bfloat16", "int8", "int16", "int32", "int64", "uint8", "bool",
    "complex64", "complex128", "float8_e4m3fn", "float8_e5m2", "uint16", "uint32", "uint64",
}  # fmt: skip
_STRING_OPS = {
    "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING", "STRING",
}  # fmt: skip
_MEMO_PUT = {"PUT", "BINPUT", "LONG_BINPUT"}
_MEMO_GET = {"GET", "BINGET", "LONG_BINGET"}
_CODE_SUFFIXES = (".so", ".dll", ".dylib", ".pyd", ".py", ".pyc", ".cpp", ".cubin", ".o")
_MAX_NESTING = 3


def _global_name(module: str, name: str) -> str:
    return f"{'builtins' if module == '__builtin__' else module}.{name}"


def _safe_global(module: str, name: str) -> bool:
    module = "builtins" if module == "__builtin__" else module
    if (module, name) in _SAFE_GLOBALS:
        return True
    return module == "torch" and (name.endswith("Storage") or name in _DTYPES)


def unsafe_globals(data: bytes) -> list[str]:
    """The globals (module.name) a pickle refers to that are not plain-tensor builders, read opcode by
    opcode without executing anything. A global whose name cannot be read statically counts as unsafe.
    A stream that stops parsing is read up to that point (pickle would have failed there too)."""
    found: list[str] = []
    strings: list[str | None] = []  # what the last ops pushed, for STACK_GLOBAL
    memo: dict[int, str | None] = {}
    try:
        for op, arg, _ in pickletools.genops(data):
            name = op.name
            if name in _STRING_OPS:
                strings.append(arg if isinstance(arg, str) else bytes(arg or b"").decode("latin-1"))
            elif name == "MEMOIZE":
                memo[len(memo)] = strings[-1] if strings else None
            elif name in _MEMO_PUT:
                memo[int(arg or 0)] = strings[-1] if strings else None
            elif name in _MEMO_GET:
                strings.append(memo.get(int(arg or 0)))
            elif name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                if not _safe_global(module, attr):
                    found.append(_global_name(module, attr))
                strings.clear()
            elif name == "STACK_GLOBAL":
                module_s, attr_s = (strings[-2], strings[-1]) if len(strings) >= 2 else (None, None)
                if module_s is None or attr_s is None or not _safe_global(module_s, attr_s):
                    found.append(_global_name(module_s or "?", attr_s or "?"))
                strings.clear()
            elif name.startswith("EXT"):
                found.append(f"copyreg extension {arg}")
            elif name not in ("PROTO", "FRAME", "MARK"):
                strings.clear()
    except (ValueError, EOFError, KeyError, UnicodeDecodeError):
        pass
    return found


def _raw_payloads(z: zipfile.ZipFile) -> set[str]:
    """Members a .pt2 declares as raw tensor bytes (use_pickle false): torch never unpickles them."""
    raw: set[str] = set()
    for name in z.namelist():
        if not name.endswith("_config.json") or "/data/" not in f"/{name}":
            continue
        try:
            config = json.loads(z.read(name)).get("config", {})
        except (ValueError, AttributeError):
            continue
        for entry in config.values() if isinstance(config, dict) else ():
            if isinstance(entry, dict) and entry.get("use_pickle") is False and entry.get("path_name"):
                raw.add(f"{Path(name).parent.as_posix()}/{entry['path_name']}")
    return raw


def _scan_zip(z: zipfile.ZipFile, label: str, depth: int) -> None:
    raw = _raw_payloads(z)
    for info in z.infolist():
        member = info.filename
        where = f"{label}: member {member}"
        if member.lower().endswith(_CODE_SUFFIXES) or "aotinductor" in member.lower():
            raise SourceError(
                f"{where} is compiled or Python code, and qconvert never runs code from a model file. "
                "Save the program with torch.export.save(...) without AOTInductor packaging."
            )
        if Path(member).name.startswith("custom_obj"):
            raise SourceError(
                f"{where} is a pickled Python object, not a tensor; qconvert loads only tensors from a .pt2. "
                "Export a module whose constants are tensors."
            )
        if member in raw or info.is_dir():
            continue
        with z.open(info) as f:
            head = f.read(4)
        if head.startswith(b"PK\x03\x04"):
            if depth >= _MAX_NESTING:
                raise SourceError(f"{where}: archives nested more than {_MAX_NESTING} deep; refused.")
            with z.open(info) as f:
                inner: IO[bytes] = io.BytesIO(f.read())
            with zipfile.ZipFile(inner) as nested:
                _scan_zip(nested, f"{label}: {member}", depth + 1)
        elif member.endswith(".pkl") or head[:1] == b"\x80":
            bad = unsafe_globals(z.read(info))
            if bad:
                raise SourceError(
                    f"{where} is a pickle that would call {', '.join(sorted(set(bad))[:5])} when loaded, "
                    "and qconvert never runs code from a model file (torch.export.load would). Only "
                    "archives whose pickles hold plain tensors and containers are loaded. Re-save the "
                    "program with torch.export.save(...) from a trusted model, or give path/file.py:factory."
                )


def check_torch_archive(path: Path) -> None:
    """Refuse a torch.export archive that could run code when torch loads it (SourceError, exit 2)."""
    try:
        with zipfile.ZipFile(path) as z:
            _scan_zip(z, f"SOURCE {path}", 0)
    except zipfile.BadZipFile as e:
        raise SourceError(f"SOURCE {path}: not a readable torch.export archive ({e}).") from e


@contextlib.contextmanager
def weights_only_loads() -> Iterator[None]:
    """While inside, every torch.load is weights-only even where the caller asks for a full unpickle
    (torch honours TORCH_FORCE_WEIGHTS_ONLY_LOAD): a second guard behind `check_torch_archive`."""
    old = os.environ.get("TORCH_FORCE_WEIGHTS_ONLY_LOAD")
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_FORCE_WEIGHTS_ONLY_LOAD", None)
        else:
            os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = old


# --- what validate takes from a manifest ----------------------------------------------------------


def data_named_by_manifest(spec: str, key: str) -> Path | None:
    """The data file a manifest's `settings.<key>` names, or None where it names code (`file.py:fn`,
    `pkg.mod:fn`): a manifest is someone else's file, and only callables given on the command line run."""
    from qconvert.calibrate.python_source import is_callable_spec

    if is_callable_spec(str(spec)):
        flag = "--data" if key == "data" else "--calibration-data"
        log.warning(
            "qconvert.json names code for its %s data (%s); validate never runs code an artifact names, so it "
            "is not used. Pass %s to give the data yourself.",
            key,
            spec,
            flag,
        )
        return None
    return Path(spec)


# Provider options that make onnxruntime load a shared library: never taken from a manifest.
_LIBRARY_OPTION_WORDS = ("plugin", "library", "lib_path", "custom_op", ".so", ".dll", ".dylib")


def check_provider_options(where: Path, name: str, options: dict[str, Any]) -> None:
    """Refuse manifest provider options that would load native code (a TensorRT plugin library, a
    custom-op library): they are code the artifact names."""
    for key, value in options.items():
        text = f"{key}={value}".lower()
        if any(word in text for word in _LIBRARY_OPTION_WORDS):
            raise SourceError(
                f"{where}: the manifest asks {name} to load a library ({key}={value}); qconvert never loads "
                "code an artifact names. Remove the option from qconvert.json, or re-export."
            )


# --- verifying an artifact folder ------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """An artifact whose recorded hashes all held: the manifest's own SHA-256 and how many files."""

    manifest_sha256: str
    files: int

    def as_json(self) -> dict[str, Any]:
        return {"manifest_sha256": self.manifest_sha256, "verified_files": self.files}

    def note(self) -> str:
        return (
            f"qconvert.json sha256 {self.manifest_sha256}: the {self.files} files it records match their "
            "SHA-256 (sign or pin this hash to pin the whole artifact)"
        )


def _recorded_file(out_dir: Path, rel: object, manifest_path: Path) -> Path:
    text = str(rel)
    parts = Path(text).parts
    if not text or Path(text).is_absolute() or ".." in parts:
        raise SourceError(
            f"{manifest_path}: records a file outside its folder ({text}); refused. Re-export the artifact."
        )
    path = out_dir / text
    if path.is_symlink() or (path.exists() and out_dir.resolve() not in path.resolve().parents):
        raise SourceError(f"{path}: a link out of the artifact folder; refused. Re-export the artifact.")
    return path


def verify_artifact(out_dir: Path, manifest: Manifest) -> Verified:
    """Check every SHA-256 the manifest records (model.onnx among them) before anything is measured;
    a missing, swapped or edited file is SourceError (exit 2) naming it."""
    from qconvert.artifacts import sha256_file

    out_dir = Path(out_dir)
    manifest_path = out_dir / "qconvert.json"
    files = manifest.files
    if "model.onnx" not in files:
        raise SourceError(
            f"{manifest_path}: records no SHA-256 for model.onnx, so the artifact cannot be verified. "
            "Give a folder written by `qconvert export`, or validate the .onnx file with --reference."
        )
    for rel, expected in files.items():
        path = _recorded_file(out_dir, rel, manifest_path)
        if not path.is_file():
            raise SourceError(
                f"{path}: recorded in {manifest_path} but missing; the artifact is incomplete. Re-export it, "
                "or copy the whole folder."
            )
        if sha256_file(path) != str(expected):
            raise SourceError(
                f"{path}: does not match the SHA-256 recorded in {manifest_path}; the file was changed or "
                "swapped after export. Nothing was measured. Re-export, or validate the file on its own "
                "(CANDIDATE.onnx --reference ...)."
            )
    return Verified(sha256_file(manifest_path), len(files))


# --- sizes checked before anything is allocated ----------------------------------------------------

# One example input qconvert builds from --input (zeros, to trace the model) may not exceed this.
MAX_EXAMPLE_BYTES = 1 << 31


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_input_shape(text: str, shape: tuple[int, ...], dtype: str) -> None:
    """Refuse an --input whose example tensor could not sensibly be built (ConfigError, exit 2)."""
    import numpy as np

    size = int(np.prod([int(d) for d in shape], dtype=object)) * np.dtype(dtype).itemsize
    if size > MAX_EXAMPLE_BYTES:
        raise ConfigError(
            f"--input {text!r}: one example input of this shape is {_human(size)} ({dtype}); qconvert builds "
            f"it to trace the model, and the limit is {_human(MAX_EXAMPLE_BYTES)}. Give the shape of one "
            "small batch (the batch axis is exported as dynamic), e.g. NAME:1x3x224x224."
        )


def _declared_bytes(f: IO[bytes]) -> tuple[int, tuple[int, ...], str]:
    import numpy as np
    from numpy.lib import format as npformat

    version = npformat.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = npformat.read_array_header_1_0(f)
    else:
        shape, _, dtype = npformat.read_array_header_2_0(f)
    count = int(np.prod([int(d) for d in shape], dtype=object)) if shape else 1
    return count * np.dtype(dtype).itemsize, tuple(shape), str(dtype)


def check_array_headers(path: Path, where: str) -> None:
    """Refuse a .npy / .npz whose array headers declare more data than the file holds (a truncated or
    crafted file would otherwise make numpy allocate what the header says, terabytes included)."""
    members: list[tuple[str, int, io.BytesIO]] = []
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                for info in z.infolist():
                    if info.filename.endswith(".npy"):
                        with z.open(info) as f:
                            head = io.BytesIO(f.read(1 << 16))
                        members.append((info.filename, info.file_size, head))
        else:
            with Path(path).open("rb") as f:
                members.append((Path(path).name, Path(path).stat().st_size, io.BytesIO(f.read(1 << 16))))
        for name, stored, head in members:
            declared, shape, dtype = _declared_bytes(head)
            if declared > stored - head.tell():
                raise CalibrationError(
                    f"{where}: array {name} declares shape {list(shape)} ({dtype}, {_human(declared)}) but "
                    f"the file holds {_human(stored)}; it is truncated or malformed. Re-save it with numpy."
                )
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise CalibrationError(f"{where}: cannot read {Path(path).name}'s array headers ({e}).") from e


def check_manifest(path: Path, manifest: object) -> None:
    """Refuse a qconvert.json that is not a manifest qconvert wrote (`{}`, a list, another tool's)."""
    required = {"qconvert": str, "providers": list, "files": dict, "source": dict}
    missing = [
        k
        for k, kind in required.items()
        if not isinstance(manifest, dict) or not isinstance(manifest.get(k), kind)
    ]
    if not missing and isinstance(manifest, dict) and not isinstance(manifest["source"].get("inputs"), list):
        missing = ["source.inputs"]
    if missing:
        raise SourceError(
            f"{path}: not a qconvert manifest (no {', '.join(missing)}). Give a folder written by "
            "`qconvert export`, whose qconvert.json it wrote."
        )


def _vocab_sizes(model_path: Path) -> dict[str, int]:
    """Graph inputs used as Gather indices into a constant table (an embedding): input -> table rows.
    The table is found through DequantizeLinear / Cast / Identity, so quantized graphs count too."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    graph = model.graph
    rows = {t.name: int(t.dims[0]) for t in graph.initializer if len(t.dims) >= 1}
    producers = {o: n for n in graph.node for o in n.output}
    inputs = {i.name for i in graph.input} - set(rows)
    found: dict[str, int] = {}
    for node in graph.node:
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in inputs:
            continue
        attrs = {a.name: a.i for a in node.attribute}
        if attrs.get("axis", 0) != 0:
            continue
        table = node.input[0]
        for _ in range(4):
            if table in rows or table not in producers:
                break
            producer = producers[table]
            if producer.op_type not in ("DequantizeLinear", "Cast", "Identity"):
                break
            table = producer.input[0]
        if table in rows:
            found[node.input[1]] = min(rows[table], found.get(node.input[1], rows[table]))
    return found


def check_token_ids(model_path: Path, feeds: dict[str, Any], where: str) -> None:
    """Refuse integer data outside the vocabulary of the embedding it indexes (CalibrationError, exit 2)
    before the model runs on it: onnxruntime and torch would fail mid-run, or read out of bounds."""
    import numpy as np

    for name, rows in _vocab_sizes(Path(model_path)).items():
        values = feeds.get(name)
        if values is None or not np.issubdtype(np.asarray(values).dtype, np.integer) or not np.size(values):
            continue
        low, high = int(np.min(values)), int(np.max(values))
        if low < 0 or high >= rows:
            bad = high if high >= rows else low
            raise CalibrationError(
                f"{where}: input {name!r} holds token id {bad}, outside the model's vocabulary of {rows} "
                f"(valid ids 0..{rows - 1}). Tokenize the data with the model's own tokenizer."
            )


def check_data_vocab(model_path: Path, *named: tuple[str, Any]) -> None:
    """`check_token_ids` for each (flag, Dataset or None)."""
    for flag, data in named:
        if data is not None:
            check_token_ids(model_path, data.feeds, f"{flag} {data.origin}")


# --- never writing into what a command reads -------------------------------------------------------


def read_folders(inputs: Any) -> list[Path]:
    """The folders a command reads: each input that is a folder, and the artifact folder (one with a
    qconvert.json) around each input file. No command writes any file inside them."""
    folders: list[Path] = []
    for given in inputs:
        p = Path(given).resolve()
        if p.is_dir():
            folders.append(p)
        elif p.is_file() and (p.parent / "qconvert.json").is_file():
            folders.append(p.parent)
    return folders


def check_not_an_input(path: Path, inputs: Any, flag: str) -> None:
    """Refuse an output file that is an input, or lies in a folder the command reads (ConfigError)."""
    inputs = [Path(p) for p in inputs]
    target = Path(path).resolve()
    if any(target == p.resolve() for p in inputs):
        raise ConfigError(f"{flag} {path}: that is an input file; choose another path.")
    for folder in read_folders(inputs):
        if folder in target.parents:
            raise ConfigError(
                f"{flag} {path}: lies inside {folder}, a folder this command reads (an input, or the artifact "
                "folder of one), and qconvert never writes into what it reads, --force or not. Choose a path "
                "outside it."
            )


# --- an ONNX model's external data -----------------------------------------------------------------


def external_data_files(model_path: Path, label: str = "SOURCE") -> list[Path]:
    """Every external-data file `model_path` references, whatever it is named (weights.bin, a.data, ...),
    each checked: a plain file inside the model's folder (no '..', absolute path or link out) that holds
    every byte its tensors say it does. A failure names the user's file (SourceError, exit 2)."""
    import numpy as np
    import onnx
    from onnx import external_data_helper, helper

    path = Path(model_path)
    model = onnx.load(str(path), load_external_data=False)
    base = path.resolve().parent
    files: dict[Path, int] = {}
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        where = f"{label} {path}: tensor {tensor.name!r} keeps its data in {location!r}"
        candidate = path.parent / location
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise SourceError(
                f"{where}, outside the model's folder; refused. Keep external data beside the model."
            )
        if candidate.is_symlink() or base not in candidate.resolve().parents:
            raise SourceError(
                f"{where}, a link out of the model's folder; refused. Copy the file in instead."
            )
        if not candidate.is_file():
            raise SourceError(f"{where}, and {candidate} is missing. Copy it beside {path.name}.")
        count = int(np.prod(tensor.dims, dtype=np.int64)) if tensor.dims else 1
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize
        end = int(info.get("offset", 0) or 0) + int(info.get("length", 0) or count * itemsize)
        size = candidate.stat().st_size
        if end > size:
            raise SourceError(
                f"{where}: {candidate} is truncated (the tensor needs bytes up to {end}, the file has {size}). "
                "Copy the complete file."
            )
        files[candidate] = max(end, files.get(candidate, 0))
    return sorted(files)
