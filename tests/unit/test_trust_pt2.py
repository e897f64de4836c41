"""A torch.export archive (.pt2) is loaded without running any pickle in it (issue 13, item 1).

torch.export.load unpickles the archive's sample inputs (retrying a failed weights-only load with a
full unpickle) and its pickled weights and constants, so a crafted .pt2 would run code at load. Each
test below plants a pickle that writes a marker file when it is unpickled; the marker must never
appear, and the archive must be refused with exit-2 SourceError naming the file and the member.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest
import torch

from qconvert.errors import SourceError
from qconvert.sources import load_source
from qconvert.trust import check_torch_archive, unsafe_globals


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def _save_pt2(path: Path) -> Path:
    torch.manual_seed(0)
    program = torch.export.export(
        _Net().eval(), (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    torch.export.save(program, str(path))
    return path


class _Payload:
    """Unpickling this runs exec(): it writes `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def _replace_member(archive: Path, suffix: str, content: bytes) -> None:
    """Rewrite `archive` with the member whose name ends with `suffix` replaced by `content`."""
    with zipfile.ZipFile(archive) as z:
        members = [(i, z.read(i.filename)) for i in z.infolist()]
    assert any(i.filename.endswith(suffix) for i, _ in members), [i.filename for i, _ in members]
    with zipfile.ZipFile(archive, "w") as z:
        for info, data in members:
            z.writestr(info, content if info.filename.endswith(suffix) else data)


def _torch_saved(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "MARKER"


def test_a_plain_pt2_still_loads(tmp_path: Path) -> None:
    path = _save_pt2(tmp_path / "ok.pt2")

    check_torch_archive(path)
    loaded = load_source(str(path))

    assert loaded.kind == "exported-program"


def test_sample_inputs_pickle_that_runs_code_is_refused_and_never_runs(tmp_path: Path, marker: Path) -> None:
    """torch retries a failed weights-only load of the sample inputs with weights_only=False."""
    path = _save_pt2(tmp_path / "evil.pt2")
    _replace_member(path, "sample_inputs/model.pt", _torch_saved(_Payload(marker)))

    with pytest.raises(SourceError) as excinfo:
        load_source(str(path))

    assert not marker.exists(), "a pickle in the .pt2 ran"
    message = str(excinfo.value)
    assert str(path) in message and "sample_inputs/model.pt" in message
    assert "builtins.exec" in message and "never runs code" in message


def test_pickled_weight_that_runs_code_is_refused_and_never_runs(tmp_path: Path, marker: Path) -> None:
    """A weight marked use_pickle is torch.load-ed with weights_only=False by torch.export.load."""
    path = _save_pt2(tmp_path / "evil_weight.pt2")
    with zipfile.ZipFile(path) as z:
        config_name = next(n for n in z.namelist() if n.endswith("model_weights_config.json"))
        config = z.read(config_name).decode()
    _replace_member(path, config_name, config.replace('"use_pickle": false', '"use_pickle": true').encode())
    _replace_member(path, "weights/weight_0", _torch_saved(_Payload(marker)))

    with pytest.raises(SourceError) as excinfo:
        load_source(str(path))

    assert not marker.exists(), "a pickled weight in the .pt2 ran"
    assert "weight_0" in str(excinfo.value)


def test_compiled_code_in_an_archive_is_refused(tmp_path: Path) -> None:
    path = _save_pt2(tmp_path / "aoti.pt2")
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("aoti/data/aotinductor/model/model.so", b"\x7fELF")

    with pytest.raises(SourceError, match="compiled or Python code"):
        check_torch_archive(path)


def test_the_pickle_reader_sees_globals_without_running_them(marker: Path) -> None:
    import pickle

    for protocol in (0, 2, 4, 5):
        data = pickle.dumps(_Payload(marker), protocol=protocol)
        assert unsafe_globals(data) == ["builtins.exec"], protocol
    assert unsafe_globals(pickle.dumps({"a": [1, 2.0, "x"]}, protocol=4)) == []
    assert not marker.exists()
