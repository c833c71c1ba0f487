"""Classification data for the recipes: the built-in digits, ``.npz`` files and Hugging Face
``datasets`` folders, as standardized in-memory tensors, plus image augmentations."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass
class ClassificationData:
    """A classification data set as tensors: standardized float32 features (``(N, F)``) or images
    (``(N, C, H, W)``), int64 labels, for training and test, and the number of classes."""
    x_train: Tensor  # (N, F) features or (N, C, H, W) images, float32, standardized
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def is_image(self) -> bool:
        return self.x_train.dim() == 4

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def _as_inputs(x: np.ndarray, name: str) -> Tensor:
    x = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if x.dim() == 3:  # (N, H, W) grayscale images
        x = x.unsqueeze(1)
    if x.dim() not in (2, 4):
        raise ValueError(f"{name} must be (N, F) features, (N, H, W) or (N, C, H, W) images; got {tuple(x.shape)}")
    return x


def _as_labels(y: np.ndarray, name: str) -> Tensor:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D array of integer class ids, got {y.dtype} of shape {y.shape}")
    return torch.as_tensor(y, dtype=torch.long)


def _split(x: Tensor, y: Tensor, test_fraction: float, seed: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Deterministic split, the same for a given seed on every machine."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    cut = int(round(len(y) * (1 - test_fraction)))
    return x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]]


def _digits(test_fraction: float, seed: int):
    from sklearn.datasets import load_digits  # ships with scikit-learn: no download

    digits = load_digits()
    x, y = _as_inputs(digits.images, "digits"), _as_labels(digits.target, "digits")
    return _split(x, y, test_fraction, seed)


def _npz(path: str):
    try:
        archive = np.load(path)
    except (ValueError, OSError, EOFError) as error:  # numpy's words for "not an .npz"
        raise ValueError(f"data file {path!r} is not a NumPy .npz archive ({str(error).split('.')[0][:100]}); write "
                         f"one with numpy.savez(path, {', '.join(f'{k}=...' for k in NPZ_KEYS)})") from None
    if not hasattr(archive, "files"):
        raise ValueError(f"data file {path!r} holds a single array, not an .npz archive with {list(NPZ_KEYS)}")
    with archive:
        missing = [key for key in NPZ_KEYS if key not in archive]
        if missing:
            raise ValueError(f"{path} lacks the arrays {missing}; an .npz needs {list(NPZ_KEYS)}")
        return (_as_inputs(archive["x_train"], "x_train"), _as_labels(archive["y_train"], "y_train"),
                _as_inputs(archive["x_test"], "x_test"), _as_labels(archive["y_test"], "y_test"))


def _columns_to_tensors(dataset, label_column: str) -> tuple[Tensor, Tensor]:
    """An image column (any name holding PIL images or arrays of rank >= 2) or numeric columns."""
    if label_column not in dataset.column_names:
        raise ValueError(f"label column {label_column!r} not in the dataset's columns {dataset.column_names}")
    labels = _as_labels(np.asarray(dataset[label_column]), label_column)
    features = [c for c in dataset.column_names if c != label_column]
    first = dataset[0]
    images = [c for c in features if np.asarray(first[c]).ndim >= 2]
    if images:
        x = np.stack([np.asarray(value, dtype=np.float32) for value in dataset[images[0]]])
        return _as_inputs(x, images[0]), labels
    numeric = [c for c in features if np.asarray(first[c]).ndim == 0 and np.issubdtype(np.asarray(first[c]).dtype, np.number)]
    if not numeric:
        raise ValueError(f"no image or numeric feature columns among {features}")
    return _as_inputs(np.stack([np.asarray(dataset[c], dtype=np.float32) for c in numeric], 1), "features"), labels


def _hf_folder(path: str, label_column: str, test_fraction: float, seed: int):
    import datasets

    loaded = datasets.load_from_disk(path)
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(f"{path} has splits {list(loaded)}; a 'train' split is required")
        x_train, y_train = _columns_to_tensors(loaded["train"], label_column)
        if "test" in loaded:
            x_test, y_test = _columns_to_tensors(loaded["test"], label_column)
            return x_train, y_train, x_test, y_test
        return _split(x_train, y_train, test_fraction, seed)
    return _split(*_columns_to_tensors(loaded, label_column), test_fraction, seed)


def check_classification_arrays(x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor) -> int:
    """Validate a classification data set before any training; return the number of classes.

    Refused, each with what was found and how to fix it: a different number of rows and labels,
    train and test inputs of different shapes, non-finite features (NaN or inf), negative labels,
    training labels that are not 0..K-1 with every class present (e.g. {0, 2}, or one label 5 in a
    binary task), and test labels that no training example has.
    """
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if len(x) != len(y):
            raise ValueError(f"x_{split} has {len(x)} rows but y_{split} has {len(y)} labels; give one label per row")
        if len(y) == 0:
            raise ValueError(f"the {split} split is empty")
        bad = ~torch.isfinite(x.flatten(1)).all(1)  # (N,)
        if bool(bad.any()):
            rows = bad.nonzero().squeeze(-1)[:5].tolist()
            raise ValueError(f"x_{split} has non-finite values (NaN or inf) in {int(bad.sum())} rows, e.g. rows {rows}; "
                             "drop or impute them")
        if int(y.min()) < 0:
            raise ValueError(f"y_{split} has negative labels (min {int(y.min())}); labels are class ids 0..K-1")
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(f"train inputs {tuple(x_train.shape[1:])} and test inputs {tuple(x_test.shape[1:])} differ")
    classes = sorted(set(y_train.tolist()))
    if classes != list(range(len(classes))):
        shown = classes if len(classes) <= 12 else classes[:12] + ["..."]
        raise ValueError(f"y_train's labels are {shown}: they must be 0..K-1 with every class in the training data; "
                         "relabel them (e.g. numpy.unique(y, return_inverse=True)[1])")
    unseen = sorted(set(y_test.tolist()) - set(classes))
    if unseen:
        raise ValueError(f"y_test has labels {unseen[:12]} that no training example has; a model cannot predict them")
    return len(classes)


def load_classification_data(source: str = "digits", *, label_column: str = "label", test_fraction: float = 0.3,
                             seed: int = 0) -> ClassificationData:
    """Load ``"digits"`` (scikit-learn's bundled 8x8 digits, split by ``seed``), an ``.npz`` with
    ``x_train, y_train, x_test, y_test``, or a folder written by ``datasets.save_to_disk`` (a
    ``train`` split and optionally ``test``; an image column or numeric columns plus
    ``label_column``). Inputs are standardized with the training set's mean and std; the arrays
    are validated first (:func:`check_classification_arrays`)."""
    if source == "digits":
        x_train, y_train, x_test, y_test = _digits(test_fraction, seed)
    elif source.endswith(".npz"):
        if not os.path.isfile(source):
            raise ValueError(f"data file {source!r} does not exist")
        x_train, y_train, x_test, y_test = _npz(source)
    elif os.path.isdir(source):
        x_train, y_train, x_test, y_test = _hf_folder(source, label_column, test_fraction, seed)
    else:
        raise ValueError(f"data must be 'digits', an existing .npz file or a datasets folder; got {source!r}")
    num_classes = check_classification_arrays(x_train, y_train, x_test, y_test)
    mean, std = x_train.mean(), x_train.std().clamp(min=1e-6)
    if x_train.dim() == 2:
        mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    return ClassificationData((x_train - mean) / std, y_train, (x_test - mean) / std, y_test, num_classes)


def augment(x: Tensor, generator, *, max_shift: int = 1, noise_std: float = 0.1) -> Tensor:
    """A random view: images shifted by up to ``max_shift`` pixels (zero padding), plus Gaussian
    noise of ``noise_std`` (features: noise only). Deterministic given ``generator``: one
    ``torch.Generator`` for the batch, or a sequence of them, one per row (then each example's view
    depends only on its own generator, whatever batch or process it is in)."""
    if not isinstance(generator, torch.Generator):
        if len(generator) != len(x):
            raise ValueError(f"give one generator per row: {len(generator)} generators for {len(x)} rows")
        return torch.cat([augment(x[row:row + 1], g, max_shift=max_shift, noise_std=noise_std)
                          for row, g in enumerate(generator)]) if len(x) else x
    if x.dim() == 4 and max_shift > 0:
        batch, _, height, width = x.shape
        padded = torch.nn.functional.pad(x, (max_shift,) * 4)
        offsets = torch.randint(0, 2 * max_shift + 1, (batch, 2), generator=generator)
        rows = offsets[:, :1] + torch.arange(height)  # (B, H)
        columns = offsets[:, 1:] + torch.arange(width)  # (B, W)
        batch_index = torch.arange(batch)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch_index, rows[:, :, None], columns[:, None, :]].permute(0, 3, 1, 2)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    return x
