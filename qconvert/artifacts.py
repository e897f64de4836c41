"""The output folder: built in a temporary sibling folder and moved into place at the end.

This module is the only place that writes files. Nothing the user had is lost: an existing
output folder is refused unless `force` is set, and even then it is replaced only once the new
one is complete; a failed run removes its temporary folder and leaves no trace.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from qconvert.errors import ConfigError, Terminated, latch
from qconvert.trust import check_not_an_input

if TYPE_CHECKING:
    import onnx

log = logging.getLogger(__name__)

# protobuf cannot serialise a single message over 2 GiB; stay clear of it.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes held in initializers (computing ByteSize() of a >2 GiB proto can itself fail)."""
    import numpy as np
    from onnx import helper

    total = 0
    for t in model.graph.initializer:
        if t.raw_data:
            total += len(t.raw_data)
        else:
            count = int(np.prod(t.dims)) if t.dims else 1
            total += count * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    return total


def needs_external_data(size_bytes: int) -> bool:
    return size_bytes > EXTERNAL_DATA_THRESHOLD


def save_onnx(model: onnx.ModelProto, path: Path, external: bool | None = None) -> Path:
    """Save `model`; its weights go to `<name>.data` when `external` is set, or (None) when the
    model is too large for one protobuf. Saving with external data moves the weights out of the
    in-memory `model`."""
    import onnx

    if external is None:
        external = needs_external_data(weight_bytes(model))
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=f"{Path(path).name}.data" if external else None,
    )
    return Path(path)


def onnx_files(path: Path) -> list[Path]:
    """The model file and the external-data files it references (any names), if it has any."""
    from qconvert.trust import external_data_files

    return [Path(path), *external_data_files(Path(path), label="model")]


def onnx_size(path: Path) -> int:
    return sum(p.stat().st_size for p in onnx_files(path))


# A folder holding one of these was written by qconvert (export / sweep): --force may replace it.
ARTIFACT_MARKERS = ("qconvert.json", "sweep.json")


def replaceable(folder: Path) -> bool:
    """Whether --force may replace `folder`: it is empty, or a qconvert artifact folder."""
    return not any(folder.iterdir()) or any((folder / m).is_file() for m in ARTIFACT_MARKERS)


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    return True


def _owner(name: str, kind: str) -> int | None:
    """The pid in `.NAME.<kind>-<pid>-XXXX` (None when the name has no pid: an older qconvert's)."""
    head = name.split(f".{kind}-", 1)[1] if f".{kind}-" in name else ""
    pid = head.split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def sweep_stale(out_dir: Path) -> list[Path]:
    """Remove temporaries beside OUT_DIR that a dead qconvert process left (killed with SIGKILL, or a
    machine that went down): `.NAME.tmp-PID-*` is dropped; `.NAME.old-PID-*` holds the previous OUT_DIR
    of a --force run that died mid-swap, so it is put back when OUT_DIR is missing, else dropped."""
    parent = Path(out_dir).resolve().parent
    if not parent.is_dir():
        return []
    swept: list[Path] = []
    for p in sorted(parent.glob(f".{Path(out_dir).name}.*-*")):
        kind = "tmp" if ".tmp-" in p.name else "old" if ".old-" in p.name else None
        pid = _owner(p.name, kind) if kind else None
        if kind is None or pid is None or _alive(pid) or not p.is_dir():
            continue
        if kind == "old" and (p / "old").is_dir() and not Path(out_dir).exists():
            (p / "old").replace(out_dir)
            log.warning("put back %s from a --force run that was killed mid-swap (pid %d)", out_dir, pid)
        shutil.rmtree(p, ignore_errors=True)
        swept.append(p)
        log.info("removed %s, left by qconvert process %d, which is no longer running", p, pid)
    return swept


class OutputLock:
    """An atomic claim on OUT_DIR: `.NAME.lock` beside it, holding the owner's pid, made with a hard
    link so that of two runs exactly one gets it. A lock whose owner is dead is taken over."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.path = self.out_dir.resolve().parent / f".{self.out_dir.name}.lock"
        self.held = False

    def acquire(self) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{self.out_dir.name}.lock-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(f"{os.getpid()}\n")
            for _ in range(2):
                try:
                    os.link(tmp, self.path)
                    self.held = True
                    return
                except FileExistsError:
                    if not self._take_over_stale():
                        break
        finally:
            Path(tmp).unlink(missing_ok=True)
        raise ConfigError(
            f"-o {self.out_dir}: another qconvert run{self._owner_text()} is writing this output folder right "
            "now. Wait for it to finish, or choose another -o."
        )

    def _pid(self) -> int | None:
        try:
            text = self.path.read_text().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _owner_text(self) -> str:
        pid = self._pid()
        return f" (pid {pid})" if pid else ""

    def _take_over_stale(self) -> bool:
        pid = self._pid()
        if pid is None or _alive(pid):
            return False
        log.info("taking over %s from qconvert process %d, which is no longer running", self.path, pid)
        self.path.unlink(missing_ok=True)
        return True

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


def _raise_terminated(signum: int, frame: object) -> None:
    latch(signum)  # if something swallows the Terminated, the next stage boundary raises it again
    raise Terminated(signum)


class _CleanupOnSignals:
    """While inside, SIGTERM and SIGHUP raise Terminated (as Ctrl-C raises KeyboardInterrupt), so the
    temporary folder and the lock go away before the process ends. Main thread only (Python's rule)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self) -> None:
        self._old: dict[int, Any] = {}

    def __enter__(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                self._old[s] = signal.signal(s, _raise_terminated)

    def __exit__(self, *exc: object) -> None:
        for s, handler in self._old.items():
            signal.signal(s, handler)
        self._old.clear()


def check_output_dir(out_dir: Path, force: bool, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output folder that would overwrite or lose something the user has."""
    out = out_dir.resolve()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out_dir}: exists and is a file, not a folder. Choose another -o.")
    check_writable_parent(out_dir)
    if out.exists() and not force:
        raise ConfigError(
            f"-o {out_dir}: the output folder already exists. Pass --force to replace it, or choose "
            "another -o. It was left untouched."
        )
    if out.exists() and not replaceable(out):
        raise ConfigError(
            f"-o {out_dir}: --force replaces only an empty folder or one qconvert wrote (with its "
            f"{' or '.join(ARTIFACT_MARKERS)}), and this folder holds other files. It was left untouched; "
            "choose another -o, or empty it yourself."
        )
    for given in inputs:
        p = Path(given).resolve()
        if p == out or out in p.parents:
            raise ConfigError(
                f"-o {out_dir}: the input {given} lies inside the output folder and would be lost when "
                "it is replaced. Choose an -o outside it."
            )


def check_writable_parent(out_dir: Path, flag: str = "-o") -> None:
    """Refuse an output path that cannot be created: an ancestor is a file, or the nearest existing
    folder cannot be written (read-only, no permission). Probed by making and removing a folder, which
    is what the run will do, so it holds for root and read-only file systems alike."""
    out = Path(out_dir).resolve()
    existing = next(p for p in out.parents if p.exists())
    if not existing.is_dir():
        raise ConfigError(
            f"{flag} {out_dir}: {existing} is a file, not a folder, so nothing can be written under it. "
            f"Choose another {flag}."
        )
    try:
        Path(tempfile.mkdtemp(prefix=".qconvert-probe-", dir=existing)).rmdir()
    except OSError as e:
        raise ConfigError(
            f"{flag} {out_dir}: cannot write in {existing} ({e.strerror or e}). Choose an {flag} in a folder "
            "you can write to."
        ) from None


class ArtifactDir:
    """A temporary folder beside OUT_DIR that becomes OUT_DIR on `commit()`.

    Use as a context manager; leaving it by an exception, or without committing, removes
    everything it made.
    """

    def __init__(self, out_dir: Path, force: bool = False, inputs: Iterable[Path] = ()) -> None:
        self.out_dir = Path(out_dir)
        self.force = force
        self._inputs = list(inputs)
        check_output_dir(self.out_dir, force, self._inputs)
        self._lock = OutputLock(self.out_dir)
        self._signals = _CleanupOnSignals()
        self._made_parents: list[Path] = []
        self.root: Path | None = None
        self.committed = False

    def __enter__(self) -> ArtifactDir:
        parent = self.out_dir.resolve().parent
        missing = [p for p in [parent, *parent.parents] if not p.exists()]
        parent.mkdir(parents=True, exist_ok=True)
        self._made_parents = missing  # deepest first, so they can be removed in order
        self._signals.__enter__()
        try:
            self._lock.acquire()
            sweep_stale(self.out_dir)
            check_output_dir(self.out_dir, self.force, self._inputs)  # again, now that OUT_DIR is ours
            # named before it is made, so a signal between the two finds it for cleanup (mkdtemp's
            # return value was lost that way when SIGTERM arrived just as it returned)
            self.root = parent / f".{self.out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
            self.root.mkdir(mode=0o700)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        # mkdtemp makes the folder owner-only (0700); the finished OUT_DIR gets the permissions
        # any folder the user makes would get (0777 less the umask)
        umask = os.umask(0)
        os.umask(umask)
        self.root.chmod(0o777 & ~umask)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.root is not None and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self._lock.release()
        self._signals.__exit__()
        if not self.committed:
            for p in self._made_parents:
                try:
                    p.rmdir()
                except OSError:
                    break

    @property
    def work(self) -> Path:
        """A scratch folder inside the temporary folder, dropped before commit."""
        path = self._root() / "_work"
        path.mkdir(exist_ok=True)
        return path

    def _root(self) -> Path:
        if self.root is None:
            raise RuntimeError("ArtifactDir used outside its `with` block")
        return self.root

    def path(self, name: str) -> Path:
        return self._root() / name

    def write_json(self, name: str, data: Any) -> Path:
        path = self.path(name)
        path.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
        return path

    def write_text(self, name: str, text: str) -> Path:
        path = self.path(name)
        path.write_text(text)
        return path

    def write_bytes(self, name: str, content: bytes) -> Path:
        """Write `content` under `name`, making the folders it names (e.g. trials/8bit-static/)."""
        path = self.path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return path

    def copy_onnx(self, src: Path, name: str) -> Path:
        """Copy a model (and its external data) in under `name`, fixing the data location."""
        import onnx

        dest = self.path(name)
        if len(onnx_files(src)) == 1:
            shutil.copyfile(src, dest)
        else:
            save_onnx(onnx.load(str(src)), dest)
        return dest

    def copy_file(self, src: Path, name: str) -> Path:
        """Copy a plain file in under `name` (e.g. a tokenizer file beside model.onnx)."""
        dest = self.path(name)
        shutil.copyfile(src, dest)
        return dest

    def hashes(self) -> dict[str, str]:
        root = self._root()
        return {
            str(p.relative_to(root)): sha256_file(p)
            for p in sorted(root.rglob("*"))
            if p.is_file() and "_work" not in p.relative_to(root).parts
        }

    def commit(self) -> Path:
        """Move the finished folder into place; an old OUT_DIR (with --force) goes only now."""
        root = self._root()
        shutil.rmtree(root / "_work", ignore_errors=True)
        backup: Path | None = None
        if self.out_dir.exists():
            check_output_dir(self.out_dir, self.force, self._inputs)  # it appeared while this run worked
            prefix = f".{self.out_dir.name}.old-{os.getpid()}-"
            backup = Path(tempfile.mkdtemp(prefix=prefix, dir=root.parent))
            self.out_dir.replace(backup / "old")
        try:
            root.replace(self.out_dir)
        except OSError:
            if backup is not None:
                (backup / "old").replace(self.out_dir)
                backup.rmdir()
            raise
        self.committed = True
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        log.info("artifacts written to %s", self.out_dir)
        return self.out_dir


def write_npz(path: Path, arrays: dict[str, Any], force: bool = False, inputs: Iterable[Path] = ()) -> Path:
    """Write arrays to `path` atomically; an existing file is kept unless `force`, and an input file
    is never overwritten."""
    import numpy as np

    path = Path(path)
    if path.suffix != ".npz":
        raise ConfigError(f"-o {path}: outputs are written as .npz; give a path ending in .npz.")
    check_not_an_input(path, inputs, "-o")
    if path.exists() and not force:
        raise ConfigError(f"-o {path}: exists. Pass --force to replace it, or choose another path.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def check_output_file(path: Path, force: bool, inputs: Iterable[Path] = (), flag: str = "-o") -> None:
    """Refuse to write `path` where it would overwrite an input, a folder, or (without `force`) a file."""
    path = Path(path)
    check_not_an_input(path, inputs, flag)
    if path.is_dir():
        raise ConfigError(f"{flag} {path}: is a folder; give a file path.")
    if path.exists() and not force:
        raise ConfigError(f"{flag} {path}: exists. Pass --force to replace it, or choose another path.")


def write_text_atomic(
    path: Path, text: str, force: bool = False, inputs: Iterable[Path] = (), flag: str = "-o"
) -> Path:
    """Write `text` to `path` through a temporary sibling and a rename, so a reader never sees half a
    file; an existing file is kept unless `force`, and an input file is never overwritten."""
    path = Path(path)
    check_output_file(path, force, inputs, flag)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        Path(tmp).chmod(0o666 & ~umask)  # mkstemp makes it owner-only
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
