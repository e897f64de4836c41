"""Calibration and validation data: loading, checking against the model's inputs, and feeding
onnxruntime's static quantizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import IMAGE_SHAPE, INPUT_NAME, images, write_cnn_mlp

from qconvert.calibrate import Dataset, ModelInput, load_dataset, ort_reader
from qconvert.errors import CalibrationError
from qconvert.prepare import prepared_from_onnx
from qconvert.quantize import QUANTIZERS
from qconvert.targets import TARGETS

PIXELS = ModelInput(INPUT_NAME, (None, *IMAGE_SHAPE), "float32")
IDS = ModelInput("input_ids", (None, 6), "int64")
MASK = ModelInput("attention_mask", (None, 6), "int64")


def _load(path: Path, inputs: list[ModelInput] | None = None, **kwargs: object) -> Dataset:
    return load_dataset(path, inputs or [PIXELS], flag="--calibration", **kwargs)


def _tokens(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 100, (n, 6)).astype(np.int64)


# --- .npz and .npy files ------------------------------------------------------------------------


def test_npz_keyed_by_input_name(tmp_path: Path) -> None:
    ids, mask = _tokens(5), np.ones((5, 6), dtype=np.int64)
    np.savez(tmp_path / "data.npz", attention_mask=mask, input_ids=ids)
    data = _load(tmp_path / "data.npz", [IDS, MASK])
    assert len(data) == 5
    assert list(data.feeds) == ["input_ids", "attention_mask"]
    np.testing.assert_array_equal(data.feeds["input_ids"], ids)
    np.testing.assert_array_equal(data.feeds["attention_mask"], mask)
    assert data.labels is None


def test_npz_missing_an_input_names_it(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", input_ids=_tokens(5))
    with pytest.raises(CalibrationError, match="attention_mask"):
        _load(tmp_path / "data.npz", [IDS, MASK])


def test_single_input_model_takes_any_single_key(tmp_path: Path) -> None:
    x = images(4)
    np.savez(tmp_path / "data.npz", whatever_name=x)
    np.testing.assert_array_equal(_load(tmp_path / "data.npz").feeds[INPUT_NAME], x)


def test_labels_are_kept_apart(tmp_path: Path) -> None:
    x, labels = images(4), np.array([3, 1, 4, 1])
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    data = _load(tmp_path / "data.npz")
    assert list(data.feeds) == [INPUT_NAME]  # "labels" is not taken as the single input
    np.testing.assert_array_equal(data.feeds[INPUT_NAME], x)
    np.testing.assert_array_equal(data.labels, labels)


def test_npy_for_a_single_input_model(tmp_path: Path) -> None:
    x = images(3)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(_load(tmp_path / "x.npy").feeds[INPUT_NAME], x)


def test_npy_for_a_multi_input_model_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", _tokens(3))
    with pytest.raises(CalibrationError, match=r"\.npz keyed by input name"):
        _load(tmp_path / "ids.npy", [IDS, MASK])


# --- folders ------------------------------------------------------------------------------------


def test_folder_of_npy_one_sample_each(tmp_path: Path) -> None:
    x = images(5)
    for i, sample in enumerate(x):
        np.save(tmp_path / f"sample_{i:02d}.npy", sample)  # per-sample shape, no batch axis
    data = _load(tmp_path)
    assert len(data) == 5
    np.testing.assert_array_equal(data.feeds[INPUT_NAME], x)  # in file-name order


def test_folder_of_npz_with_labels(tmp_path: Path) -> None:
    x = images(3)
    for i, sample in enumerate(x):
        np.savez(tmp_path / f"s{i}.npz", pixels=sample, label=np.int64(i * 2))
    data = _load(tmp_path)
    np.testing.assert_array_equal(data.feeds[INPUT_NAME], x)
    np.testing.assert_array_equal(data.labels, [0, 2, 4])


def test_folder_of_batched_npz_files(tmp_path: Path) -> None:
    x = images(7)
    np.savez(tmp_path / "a.npz", pixels=x[:4])
    np.savez(tmp_path / "b.npz", pixels=x[4:])
    np.testing.assert_array_equal(_load(tmp_path).feeds[INPUT_NAME], x)


def test_folder_with_labels_in_some_files_only_is_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "a.npz", pixels=images(1)[0], label=np.int64(1))
    np.savez(tmp_path / "b.npz", pixels=images(1)[0])
    with pytest.raises(CalibrationError, match="some files have labels"):
        _load(tmp_path)


def test_empty_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("no data here")
    with pytest.raises(CalibrationError, match=r"no \.npy or \.npz"):
        _load(tmp_path)


# --- checks against the model's inputs -----------------------------------------------------------


def test_wrong_sample_shape_names_expected_and_given(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((4, 3, 8, 8), dtype=np.float32))
    with pytest.raises(CalibrationError) as err:
        _load(tmp_path / "x.npy")
    message = str(err.value)
    assert "[1, 8, 8]" in message  # what the model takes per sample
    assert "[4, 3, 8, 8]" in message  # what the data has
    assert INPUT_NAME in message


def test_missing_batch_axis_is_a_shape_error(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", images(1)[0])  # one sample without the samples axis
    with pytest.raises(CalibrationError, match=r"\[1, 8, 8\]"):
        _load(tmp_path / "x.npy")


def test_dynamic_axes_accept_any_size(tmp_path: Path) -> None:
    seq = ModelInput("input_ids", (None, None), "int64")
    np.save(tmp_path / "ids.npy", _tokens(3))
    assert _load(tmp_path / "ids.npy", [seq]).feeds["input_ids"].shape == (3, 6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_sample(tmp_path: Path, bad: float) -> None:
    x = images(6)
    x[4, 0, 2, 3] = bad
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(CalibrationError, match="NaN/Inf") as err:
        _load(tmp_path / "x.npy")
    assert "sample 4" in str(err.value)


def test_float64_is_cast_to_float32(tmp_path: Path) -> None:
    x = images(3).astype(np.float64)
    np.save(tmp_path / "x.npy", x)
    feeds = _load(tmp_path / "x.npy").feeds[INPUT_NAME]
    assert feeds.dtype == np.float32
    np.testing.assert_array_equal(feeds, x.astype(np.float32))
    assert feeds.flags["C_CONTIGUOUS"]


def test_int32_token_ids_are_cast_to_int64(tmp_path: Path) -> None:
    np.save(tmp_path / "ids.npy", _tokens(2).astype(np.int32))
    assert _load(tmp_path / "ids.npy", [IDS]).feeds["input_ids"].dtype == np.int64


def test_incompatible_dtype_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", (images(2) * 10).astype(np.uint8))
    with pytest.raises(CalibrationError, match="expects dtype float32; the data has uint8"):
        _load(tmp_path / "x.npy")


@pytest.mark.parametrize(
    "labels",
    [np.array([0.0, 1.0, 2.0]), np.array([0, 1]), np.array([[0], [1], [2]])],
    ids=["float", "too-few", "2-d"],
)
def test_labels_must_be_one_integer_per_sample(tmp_path: Path, labels: np.ndarray) -> None:
    np.savez(tmp_path / "data.npz", pixels=images(3), labels=labels)
    with pytest.raises(CalibrationError, match="'labels' must be integer class ids"):
        _load(tmp_path / "data.npz")


def test_inputs_with_different_sample_counts_are_refused(tmp_path: Path) -> None:
    np.savez(tmp_path / "data.npz", input_ids=_tokens(4), attention_mask=np.ones((3, 6), dtype=np.int64))
    with pytest.raises(CalibrationError, match="different numbers of samples"):
        _load(tmp_path / "data.npz", [IDS, MASK])


def test_no_samples_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((0, *IMAGE_SHAPE), dtype=np.float32))
    with pytest.raises(CalibrationError, match="holds no samples"):
        _load(tmp_path / "x.npy")


# --- subsets and splits -------------------------------------------------------------------------


def test_samples_takes_the_first_n(tmp_path: Path) -> None:
    x, labels = images(10), np.arange(10)
    np.savez(tmp_path / "data.npz", pixels=x, labels=labels)
    data = _load(tmp_path / "data.npz", samples=4)
    assert len(data) == 4
    np.testing.assert_array_equal(data.feeds[INPUT_NAME], x[:4])
    np.testing.assert_array_equal(data.labels, labels[:4])
    assert len(_load(tmp_path / "data.npz", samples=50)) == 10  # more than there are: all of them


def test_split_is_disjoint_deterministic_and_complete() -> None:
    x = images(25)
    data = Dataset("d", {INPUT_NAME: x}, np.arange(25))
    rest, held = data.split(5)
    assert (len(rest), len(held)) == (20, 5)
    assert set(rest.labels.tolist()).isdisjoint(held.labels.tolist())
    assert sorted([*rest.labels.tolist(), *held.labels.tolist()]) == list(range(25))
    for part in (rest, held):  # each part keeps samples and labels together
        np.testing.assert_array_equal(part.feeds[INPUT_NAME], x[part.labels])
    again_rest, again_held = data.split(5)
    np.testing.assert_array_equal(again_held.labels, held.labels)
    np.testing.assert_array_equal(again_rest.labels, rest.labels)


def test_split_of_a_single_sample_is_refused() -> None:
    with pytest.raises(CalibrationError, match="too few"):
        Dataset("d", {INPUT_NAME: images(1)}).split(1)


# --- formats refused ----------------------------------------------------------------------------


class _LeavesAMark:
    """Unpickling this creates a file: proof that the loader unpickled."""

    def __init__(self, mark: Path) -> None:
        self.mark = mark

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (open, (str(self.mark), "w"))


def test_pickled_npy_is_refused_without_unpickling(tmp_path: Path) -> None:
    mark = tmp_path / "unpickled.txt"
    np.save(tmp_path / "x.npy", np.array([_LeavesAMark(mark)], dtype=object), allow_pickle=True)
    with pytest.raises(CalibrationError, match="without pickles"):
        _load(tmp_path / "x.npy")
    assert not mark.exists()


def test_pickled_npz_member_is_refused_without_unpickling(tmp_path: Path) -> None:
    mark = tmp_path / "unpickled.txt"
    np.savez(tmp_path / "data.npz", pixels=np.array([_LeavesAMark(mark)], dtype=object))
    with pytest.raises(CalibrationError, match="without pickles"):
        _load(tmp_path / "data.npz")
    assert not mark.exists()


def test_corrupt_npz_is_a_calibration_error(tmp_path: Path) -> None:
    (tmp_path / "data.npz").write_bytes(b"not a zip file")
    with pytest.raises(CalibrationError, match=r"data\.npz"):
        _load(tmp_path / "data.npz")


@pytest.mark.parametrize("name", ["data.csv", "images.pkl", "noext"])
def test_unsupported_suffix_is_refused(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text("1,2,3")
    with pytest.raises(CalibrationError, match="unsupported data format") as err:
        _load(tmp_path / name)
    assert ".npz" in str(err.value)


def test_missing_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"--calibration .*no such file"):
        _load(tmp_path / "nope.npz")


# --- onnxruntime's reader protocol --------------------------------------------------------------


def test_ort_reader_hands_out_every_sample_and_rewinds() -> None:
    data = Dataset("d", {INPUT_NAME: images(10)})
    progress: list[tuple[int, int]] = []
    reader = ort_reader(data, batch_size=4, on_batch=lambda done, total: progress.append((done, total)))
    batches = list(iter(reader.get_next, None))
    assert [len(b[INPUT_NAME]) for b in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([b[INPUT_NAME] for b in batches]), data.feeds[INPUT_NAME])
    assert progress == [(4, 10), (8, 10), (10, 10)]
    reader.rewind()
    assert len(list(iter(reader.get_next, None))) == 3
    assert progress[-1] == (10, 10)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("calibrate")
    return prepared_from_onnx(write_cnn_mlp(folder / "fp32.onnx"), folder / "prepared.onnx")


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_static_quantizer_reads_the_whole_dataset(prepared: Path, method: str) -> None:
    """40 samples is not a multiple of the calibration batch: every method must still see all of
    them, and the progress callback must end at len(data)."""
    data = Dataset("calibration", {INPUT_NAME: images(40, seed=7)})
    progress: list[tuple[int, int]] = []
    qc = TARGETS.get("cpu").bind().quantize_config(8, "static", method)
    dest = prepared.with_name(f"{method}.onnx")
    QUANTIZERS.get("static")(prepared, dest, qc, data, lambda done, total: progress.append((done, total)))

    assert progress[-1] == (len(data), len(data))
    assert all(total == len(data) for _, total in progress)
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    model = onnx.load(str(dest))
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == INPUT_NAME for n in model.graph.node)


def test_static_quantizer_without_data_is_a_calibration_error(prepared: Path) -> None:
    qc = TARGETS.get("cpu").bind().quantize_config(8, "static", "minmax")
    with pytest.raises(CalibrationError, match="--calibration"):
        QUANTIZERS.get("static")(prepared, prepared.with_name("none.onnx"), qc, None)
