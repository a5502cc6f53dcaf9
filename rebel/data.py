"""In-memory datasets for the research log's experiments, and batch-level augmentation.

:func:`load_dataset` returns a :class:`Dataset`: whole train and test splits as tensors, loaded
once per process and cached, so a training loop only indexes tensors (no per-sample PIL work).

==============================  ===============  =========  ======================================
name                            ``input_shape``  train/test where the data comes from
==============================  ===============  =========  ======================================
``"mnist"``                     (1, 28, 28)      60k/10k    torchvision, downloaded into ``root``
``"fashion-mnist"``             (1, 28, 28)      60k/10k    Debian's ``dataset-fashion-mnist`` if
                                                            installed, else torchvision download
``"cifar10"``                   (3, 32, 32)      50k/10k    torchvision, downloaded into ``root``
``"mnist1d"``                   (1, 40)          4k/1k      generated locally by ``mnist1d``
``"synthetic-<one of above>"``  as named         512/256    generated here, for tests only
==============================  ===============  =========  ======================================

Conventions the training engine relies on:

- ``train_x``/``test_x`` are float32, contiguous NCHW (images) or (N, 1, 40) (MNIST-1D).
  Images are scaled to [0, 1] and normalised per channel with :data:`NORMALIZATION`, the same
  arithmetic as torchvision's ``ToTensor()`` followed by ``Normalize(mean, std)``. MNIST-1D is
  left as ``mnist1d`` makes it (already centred to mean 0, std 1 over the whole dataset).
  Convert batches with ``.to(memory_format=torch.channels_last)`` if wanted; the data are
  stored NCHW-contiguous.
- ``train_y``/``test_y`` are int64 class indices.
- A real dataset that is missing and cannot be downloaded raises
  :class:`DatasetUnavailableError`; nothing ever falls back to another dataset. Synthetic data
  are only returned for the ``"synthetic-..."`` names, and say so in ``source``.
- Loaded datasets are cached in-process and the same object is returned on every call:
  **callers must not modify its tensors in place** (torch has no read-only tensors to enforce
  it). Copy first (``x.clone()``) if you need to change them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import random
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "CIFAR10_PAD_FILL",
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "Dataset",
    "DatasetChecksumError",
    "DatasetUnavailableError",
    "NORMALIZATION",
    "augment_batch",
    "batches",
    "clear_cache",
    "crop_and_flip",
    "load_dataset",
]

REAL_DATASETS = ("mnist", "fashion-mnist", "cifar10", "mnist1d")
DATASETS = REAL_DATASETS + tuple(f"synthetic-{name}" for name in REAL_DATASETS)

INPUT_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist": (1, 28, 28),
    "fashion-mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "mnist1d": (1, 40),
}
NUM_CLASSES = 10  # all four datasets have ten classes
DISPLAY_NAMES = {
    "mnist": "MNIST",
    "fashion-mnist": "Fashion-MNIST",
    "cifar10": "CIFAR-10",
    "mnist1d": "MNIST-1D",
}

# Per-channel (mean, std) of the training images scaled to [0, 1], the values used throughout
# the literature (and by the research log's torchvision transforms).
NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

# A raw black pixel (0) after normalisation. Padding the normalised CIFAR-10 image with this
# equals torchvision's RandomCrop(32, padding=4) on the raw image followed by Normalize.
CIFAR10_PAD_FILL: tuple[float, ...] = tuple(
    (0.0 - mean) / std for mean, std in zip(*NORMALIZATION["cifar10"], strict=True)
)

# Debian's package dataset-fashion-mnist installs the original .gz files here. Debian
# recompressed them, so torchvision's md5 of the .gz files does not match; we check the
# decompressed files against FASHION_MNIST_RAW_SHA256 instead. Tests monkeypatch this.
DEBIAN_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# sha256 of the four decompressed IDX files of the original Zalando release. Computed from
# Debian's files and cross-checked: 60000/10000 images of 28x28, 6000/1000 labels per class,
# train pixel mean 0.2860 and std 0.3530 as published; the same hashes appear in other
# projects that take the files from the zalandoresearch/fashion-mnist repository.
FASHION_MNIST_RAW_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

# torchvision tries each mirror with urllib's default timeout (none: a blocked connection can
# hang for minutes). We first send each mirror a HEAD request with this limit, in seconds, and
# fail at once if none answers; during the real download each socket operation gets the second
# limit (per operation, not per file, so a slow but live download still completes).
MIRROR_CONNECT_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 20.0

# Size and seed of the synthetic datasets. Small enough that a test trains on them in seconds.
SYNTHETIC_TRAIN_SIZE = 512
SYNTHETIC_TEST_SIZE = 256
SYNTHETIC_SEED = 20251229


class DatasetUnavailableError(RuntimeError):
    """A real dataset is not on disk and could not be obtained (offline, or download=False)."""


class DatasetChecksumError(RuntimeError):
    """A dataset file on disk differs from the content the project pinned."""


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """Both splits of a dataset as in-memory tensors, with where they came from.

    Attributes:
        name: the name passed to :func:`load_dataset`, e.g. ``"fashion-mnist"``.
        train_x, test_x: float32 inputs, shape ``(N, *input_shape)``, normalised (see module).
        train_y, test_y: int64 class indices, shape ``(N,)``.
        num_classes: number of classes (10 for all datasets here).
        input_shape: shape of one input, e.g. ``(1, 28, 28)``.
        synthetic: True only for the generated ``"synthetic-..."`` test datasets.
        source: human-readable origin of the data, for the record of a run.
        checksum: sha256 hex digest of the raw content (see :func:`_content_sha256`): the
            same data give the same checksum whichever way they reached this machine.

    The tensors are shared by every caller of :func:`load_dataset`; do not modify them.
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    input_shape: tuple[int, ...]
    synthetic: bool
    source: str
    checksum: str

    def __repr__(self) -> str:
        # The default repr would print the tensors' values; a summary is what a log needs.
        return (
            f"Dataset(name={self.name!r}, train={len(self.train_y)}, test={len(self.test_y)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes}, "
            f"synthetic={self.synthetic}, source={self.source!r}, "
            f"checksum={self.checksum[:12]}...)"
        )


_cache: dict[tuple[str, str | None], Dataset] = {}
_cache_lock = threading.Lock()


def load_dataset(name: str, root: str | Path = "data", *, download: bool = True) -> Dataset:
    """Load dataset ``name`` (one of :data:`DATASETS`) into memory, once per process.

    Args:
        name: which dataset; see the table in the module docstring.
        root: folder for the real image datasets, laid out as torchvision expects
            (``root/MNIST/raw``, ``root/FashionMNIST/raw``, ``root/cifar-10-batches-py``).
            Ignored for MNIST-1D and the synthetic datasets, which are generated in memory.
        download: whether a missing real image dataset may be downloaded into ``root``.

    Returns:
        The cached :class:`Dataset` for ``(name, root)``; the same object on every call.
        Do not modify its tensors.

    Raises:
        ValueError: ``name`` is not one of :data:`DATASETS`.
        DatasetUnavailableError: a real dataset is missing and could not be downloaded.
        DatasetChecksumError: Fashion-MNIST files on disk differ from the pinned hashes.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid names are: {', '.join(DATASETS)}")
    uses_root = name in ("mnist", "fashion-mnist", "cifar10")
    key = (name, str(Path(root).resolve()) if uses_root else None)

    # One lock for all loads: a second thread asking for the same dataset waits for the first
    # instead of loading it again.
    with _cache_lock:
        if key not in _cache:
            _cache[key] = _load_uncached(name, Path(root), download)
        return _cache[key]


def clear_cache() -> None:
    """Forget every loaded dataset, so the next :func:`load_dataset` reads from disk again."""
    with _cache_lock:
        _cache.clear()


def _load_uncached(name: str, root: Path, download: bool) -> Dataset:
    if name.startswith("synthetic-"):
        return _make_synthetic(name)
    if name == "mnist1d":
        return _load_mnist1d()
    if name == "fashion-mnist":
        return _load_fashion_mnist(root, download)
    return _load_torchvision_images(name, root, download)


# ---------------------------------------------------------------------------------------------
# Real image datasets through torchvision
# ---------------------------------------------------------------------------------------------


def _torchvision_class(name: str):
    # Imported here so that `import rebel.data` stays fast for code that never needs it.
    from torchvision import datasets

    return {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
    }[name]


def _data_folder(name: str, root: Path) -> Path:
    """The folder torchvision reads ``name`` from (and downloads it into)."""
    if name == "cifar10":
        return root / _torchvision_class(name).base_folder
    return root / _torchvision_class(name).__name__ / "raw"


def _expected_files(name: str) -> list[str]:
    dataset_class = _torchvision_class(name)
    if name == "cifar10":
        entries = dataset_class.train_list + dataset_class.test_list
        return [file for file, _ in entries] + [dataset_class.meta["filename"]]
    return [file.removesuffix(".gz") for file, _ in dataset_class.resources]


def _mirror_urls(name: str) -> list[str]:
    dataset_class = _torchvision_class(name)
    if name == "cifar10":
        return [dataset_class.url]
    return list(dataset_class.mirrors)


def _unavailable(name: str, root: Path, reason: str) -> DatasetUnavailableError:
    folder = _data_folder(name, root)
    files = ", ".join(_expected_files(name))
    message = (
        f"dataset {name!r} ({DISPLAY_NAMES[name]}) is not available: its files are not in "
        f"{folder} and could not be downloaded.\n"
        f"Reason: {reason}\n"
        f"What to do: connect this machine to the internet and rerun with download=True "
        f"(the files are then downloaded into {root}), or copy the files {files} into {folder}."
    )
    if name == "fashion-mnist":
        message += (
            f"\nOn Debian/Ubuntu, `apt-get install dataset-fashion-mnist` installs them into "
            f"{DEBIAN_FASHION_MNIST_DIR}, which is then used without any download."
        )
    if name == "cifar10":
        message += f"\nThose files are what cifar-10-python.tar.gz unpacks into {folder.name}/."
    return DatasetUnavailableError(message)


def _probe(url: str, results: dict[str, str | None]) -> None:
    """Record None in ``results[url]`` if an HTTP server answers ``url``, else the error."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": "rebel"})
    try:
        with urllib.request.urlopen(request, timeout=MIRROR_CONNECT_TIMEOUT_S):
            results[url] = None
    except urllib.error.HTTPError:
        results[url] = None  # an error status is still an answer: the server is reachable
    except OSError as error:  # URLError, timeouts and refused connections are all OSErrors
        results[url] = f"{type(error).__name__}: {error}"


def _check_mirrors_reachable(name: str, root: Path) -> None:
    """Raise DatasetUnavailableError within ~MIRROR_CONNECT_TIMEOUT_S if no mirror answers."""
    # An HTTP request rather than a bare TCP connect: some networks accept every connection
    # at a proxy and only fail later, which a connect alone would take for success.
    results: dict[str, str | None] = {}
    urls = _mirror_urls(name)
    threads = []
    for url in urls:
        # A thread per mirror because the DNS lookup inside urlopen ignores the timeout;
        # daemon threads so a hung lookup cannot keep the process alive.
        thread = threading.Thread(target=_probe, args=(url, results), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join(MIRROR_CONNECT_TIMEOUT_S + 0.5)
    if any(results.get(url, "pending") is None for url in urls):
        return
    failures = "; ".join(f"{url} ({results.get(url) or 'no answer'})" for url in urls)
    raise _unavailable(
        name,
        root,
        f"no download mirror answered within {MIRROR_CONNECT_TIMEOUT_S:g} s: {failures}",
    )


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision's urlopen calls take no timeout; the process-wide default is the only handle.
    # This also affects sockets other threads open meanwhile, for the length of the download.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _open_torchvision(name: str, root: Path, download: bool):
    """Return torchvision's (train, test) datasets and whether they were downloaded now."""
    dataset_class = _torchvision_class(name)
    try:
        train = dataset_class(root, train=True, download=False)
        test = dataset_class(root, train=False, download=False)
        return train, test, False
    except RuntimeError as error:  # torchvision's "Dataset not found" is a RuntimeError
        missing = f"{type(error).__name__}: {error}"
    if not download:
        raise _unavailable(name, root, f"{missing} (and download=False was passed)")

    _check_mirrors_reachable(name, root)
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            train = dataset_class(root, train=True, download=True)
            test = dataset_class(root, train=False, download=True)
    except (RuntimeError, OSError) as error:  # urllib's URLError is an OSError
        raise _unavailable(name, root, f"{type(error).__name__}: {error}") from error
    return train, test, True


def _images_to_tensor(images: Tensor, name: str) -> Tensor:
    """uint8 NCHW -> float32 NCHW, scaled to [0, 1] and normalised like torchvision does."""
    mean, std = NORMALIZATION[name]
    x = images.to(torch.float32).div_(255)
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


def _raw_images(torchvision_dataset) -> Tensor:
    """The dataset's images as a uint8 NCHW tensor, straight from ``.data`` (no PIL)."""
    data = torchvision_dataset.data
    if isinstance(data, np.ndarray):  # CIFAR-10 keeps a uint8 NHWC numpy array
        return torch.from_numpy(data).permute(0, 3, 1, 2).contiguous()
    return data.unsqueeze(1)  # MNIST-style: a uint8 (N, 28, 28) tensor


def _raw_labels(torchvision_dataset) -> Tensor:
    return torch.as_tensor(torchvision_dataset.targets, dtype=torch.int64)


def _from_torchvision(name: str, train, test, source: str) -> Dataset:
    train_images, test_images = _raw_images(train), _raw_images(test)
    train_y, test_y = _raw_labels(train), _raw_labels(test)
    return Dataset(
        name=name,
        train_x=_images_to_tensor(train_images, name),
        train_y=train_y,
        test_x=_images_to_tensor(test_images, name),
        test_y=test_y,
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPES[name],
        synthetic=False,
        source=source,
        checksum=_content_sha256(train_images, train_y, test_images, test_y),
    )


def _load_torchvision_images(name: str, root: Path, download: bool) -> Dataset:
    train, test, downloaded = _open_torchvision(name, root, download)
    folder = _data_folder(name, root)
    how = "downloaded now into" if downloaded else "in"
    return _from_torchvision(
        name, train, test, f"torchvision {DISPLAY_NAMES[name]} {how} {folder}"
    )


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _decompress_debian_fashion_mnist(debian_dir: Path, raw_folder: Path) -> None:
    raw_folder.mkdir(parents=True, exist_ok=True)
    for file in FASHION_MNIST_RAW_SHA256:
        archive = debian_dir / f"{file}.gz"
        if not archive.is_file():
            raise DatasetUnavailableError(
                f"dataset 'fashion-mnist': {debian_dir} exists but lacks {archive.name}. "
                "Reinstall it with `apt-get install --reinstall dataset-fashion-mnist`, or "
                f"copy the four decompressed IDX files into {raw_folder}."
            )
        # Write under a temporary name, then rename: an interrupted run leaves no half file
        # that a later run would take for the real one.
        partial = raw_folder / f"{file}.partial"
        try:
            with gzip.open(archive, "rb") as source, open(partial, "wb") as target:
                while block := source.read(1 << 20):
                    target.write(block)
        except (OSError, EOFError) as error:  # BadGzipFile is an OSError; truncation, EOFError
            partial.unlink(missing_ok=True)
            raise DatasetChecksumError(
                f"could not decompress {archive}: {type(error).__name__}: {error}. The archive "
                "is damaged; reinstall it with `apt-get install --reinstall "
                "dataset-fashion-mnist`."
            ) from error
        os.replace(partial, raw_folder / file)


def _verify_fashion_mnist(raw_folder: Path, refetch_hint: str) -> None:
    for file, expected in FASHION_MNIST_RAW_SHA256.items():
        path = raw_folder / file
        actual = _file_sha256(path)
        if actual != expected:
            raise DatasetChecksumError(
                f"Fashion-MNIST file {path} has sha256 {actual}, but the project pins "
                f"{expected} (the original Zalando release): the file is corrupt or a "
                f"different version. Delete {raw_folder} and rerun; {refetch_hint}."
            )


def _load_fashion_mnist(root: Path, download: bool) -> Dataset:
    # Read the module attribute at call time, so tests can point it at a copy.
    debian_dir = DEBIAN_FASHION_MNIST_DIR
    raw_folder = _data_folder("fashion-mnist", root)
    have_raw = all((raw_folder / file).is_file() for file in FASHION_MNIST_RAW_SHA256)

    if debian_dir.is_dir():
        if not have_raw:
            _decompress_debian_fashion_mnist(debian_dir, raw_folder)
        # Files already in raw_folder passed the same pinned hashes, so they are byte for byte
        # what Debian ships, whichever way they got there.
        source = (
            f"Debian dataset-fashion-mnist ({debian_dir}), decompressed to {raw_folder}, "
            "sha256-verified"
        )
        refetch_hint = f"the files are decompressed again from {debian_dir}"
        _verify_fashion_mnist(raw_folder, refetch_hint)
        train, test, _ = _open_torchvision("fashion-mnist", root, download=False)
        return _from_torchvision("fashion-mnist", train, test, source)

    refetch_hint = "they are downloaded again (needs internet)"
    if have_raw:
        # Verify before torchvision parses them: a damaged header would fail there obscurely.
        _verify_fashion_mnist(raw_folder, refetch_hint)
    train, test, downloaded = _open_torchvision("fashion-mnist", root, download)
    if downloaded:
        _verify_fashion_mnist(raw_folder, refetch_hint)
    how = "downloaded now into" if downloaded else "in"
    source = f"torchvision Fashion-MNIST {how} {raw_folder}, sha256-verified"
    return _from_torchvision("fashion-mnist", train, test, source)


# ---------------------------------------------------------------------------------------------
# MNIST-1D, generated locally
# ---------------------------------------------------------------------------------------------


def _load_mnist1d() -> Dataset:
    # mnist1d imports matplotlib and requests; import it only when this dataset is asked for.
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset reseeds Python's and NumPy's global RNGs (seed 42) for its own
    # reproducibility; restore them so loading data never changes a caller's random stream.
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        generated = make_dataset(get_dataset_args())
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)

    # Never mnist1d's get_dataset: it downloads a pickle. make_dataset gives the same recipe
    # (4000 train / 1000 test, length 40) from the package's own code.
    train_x, test_x = generated["x"], generated["x_test"]
    train_y = generated["y"].astype(np.int64)
    test_y = generated["y_test"].astype(np.int64)
    return Dataset(
        name="mnist1d",
        train_x=torch.from_numpy(train_x).to(torch.float32).unsqueeze(1),
        train_y=torch.from_numpy(train_y),
        test_x=torch.from_numpy(test_x).to(torch.float32).unsqueeze(1),
        test_y=torch.from_numpy(test_y),
        num_classes=NUM_CLASSES,
        input_shape=INPUT_SHAPES["mnist1d"],
        synthetic=False,
        source=(
            f"MNIST-1D generated locally by mnist1d {version('mnist1d')} "
            "make_dataset(get_dataset_args()), seed 42"
        ),
        checksum=_content_sha256(train_x, train_y, test_x, test_y),
    )


# ---------------------------------------------------------------------------------------------
# Synthetic datasets for tests
# ---------------------------------------------------------------------------------------------


def _make_synthetic(name: str) -> Dataset:
    """Class templates plus Gaussian noise, shaped like the named dataset.

    Each class has a smooth random template (random values on a coarse grid, upsampled), so
    convolutions and pooling see structure; each sample is its class's template plus unit
    noise, scaled to unit variance. A small CNN beats chance on it within an epoch.
    """
    like = name.removeprefix("synthetic-")
    shape = INPUT_SHAPES[like]
    # An own generator seeded from the name: never touches torch's global RNG, and each
    # synthetic dataset differs from the others.
    name_seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:4], "little")
    generator = torch.Generator().manual_seed(SYNTHETIC_SEED + name_seed)

    channels, *spatial = shape
    coarse = [max(size // 4, 2) for size in spatial]
    templates = torch.randn(NUM_CLASSES, channels, *coarse, generator=generator)
    mode = "bilinear" if len(spatial) == 2 else "linear"
    templates = torch.nn.functional.interpolate(
        templates, size=spatial, mode=mode, align_corners=False
    )
    flat = templates.flatten(1)
    templates = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)).view_as(
        templates
    )

    def split(size: int) -> tuple[Tensor, Tensor]:
        labels = (torch.arange(size) % NUM_CLASSES)[torch.randperm(size, generator=generator)]
        noise = torch.randn(size, *shape, generator=generator)
        return (templates[labels] + noise) / 2**0.5, labels

    train_x, train_y = split(SYNTHETIC_TRAIN_SIZE)
    test_x, test_y = split(SYNTHETIC_TEST_SIZE)
    return Dataset(
        name=name,
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=NUM_CLASSES,
        input_shape=shape,
        synthetic=True,
        source=(
            f"SYNTHETIC data shaped like {DISPLAY_NAMES[like]} (for tests only): "
            f"{SYNTHETIC_TRAIN_SIZE} train / {SYNTHETIC_TEST_SIZE} test samples of class "
            f"templates plus noise, seed {SYNTHETIC_SEED}"
        ),
        checksum=_content_sha256(train_x, train_y, test_x, test_y),
    )


def _content_sha256(*arrays: Tensor | np.ndarray) -> str:
    """sha256 over the arrays in order, each as a ``dtype shape`` header plus its raw bytes.

    Real image datasets pass (train images, train labels, test images, test labels) with the
    images as uint8 NCHW and labels as int64; MNIST-1D passes its float64 signals as generated.
    The header keeps two different layouts of the same bytes from sharing a checksum.
    """
    digest = hashlib.sha256()
    for array in arrays:
        if isinstance(array, Tensor):
            array = array.numpy()
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str} {array.shape};".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Batches and augmentation
# ---------------------------------------------------------------------------------------------


def batches(
    x: Tensor,
    y: Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(x[i], y[i])`` mini-batches over the first dimension.

    With ``shuffle=True`` the order is a permutation drawn from ``generator`` (torch's global
    RNG if None) and batches are copies; with ``shuffle=False`` they are views of ``x`` and
    ``y`` in order, so do not modify them in place. The last batch may be smaller unless
    ``drop_last``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} inputs, {len(y)} labels")
    count = len(x)
    stop = count - count % batch_size if drop_last else count
    if not shuffle:
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    device = generator.device if generator is not None else torch.device("cpu")
    order = torch.randperm(count, generator=generator, device=device).to(x.device)
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield x[index], y[index.to(y.device)]


def crop_and_flip(
    x: Tensor,
    top: Tensor,
    left: Tensor,
    flip: Tensor,
    *,
    padding: int = 4,
    fill: Sequence[float] = CIFAR10_PAD_FILL,
) -> Tensor:
    """Pad each image of ``x`` by ``padding`` pixels, crop it back at (top, left), maybe flip.

    Sample ``i`` of the result is the ``H x W`` window starting at row ``top[i]`` and column
    ``left[i]`` (each in ``0..2*padding``) of the padded image, mirrored left-right where
    ``flip[i]`` is True. Padding pixels take the per-channel value ``fill``. One gather for the
    whole batch, on ``x``'s device; the memory format of ``x`` is kept.

    Args:
        x: images, shape ``(N, C, H, W)``.
        top, left: int64 tensors of shape ``(N,)``, offsets into the padded image.
        flip: bool tensor of shape ``(N,)``.
        padding: pixels of padding on each side.
        fill: one value per channel for the padding; the default is a raw black pixel of
            normalised CIFAR-10 (:data:`CIFAR10_PAD_FILL`).
    """
    if x.dim() != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {tuple(x.shape)}")
    count, channels, height, width = x.shape
    if len(fill) != channels:
        raise ValueError(
            f"fill has {len(fill)} values but the images have {channels} channels; "
            "pass one fill value per channel"
        )
    device = x.device

    padded = x.new_empty(count, channels, height + 2 * padding, width + 2 * padding)
    padded.copy_(torch.tensor(fill, dtype=x.dtype, device=device).view(1, channels, 1, 1))
    padded[:, :, padding : padding + height, padding : padding + width] = x

    # Index grids: row r of sample i reads padded row top[i] + r; column c reads
    # left[i] + c, or left[i] + (W - 1 - c) when the sample is flipped.
    top, left, flip = top.to(device), left.to(device), flip.to(device)
    rows = top[:, None] + torch.arange(height, device=device)
    forward = torch.arange(width, device=device)
    cols = left[:, None] + torch.where(flip[:, None], forward.flip(0), forward)
    samples = torch.arange(count, device=device).view(count, 1, 1, 1)
    chans = torch.arange(channels, device=device).view(1, channels, 1, 1)
    out = padded[samples, chans, rows.view(count, 1, height, 1), cols.view(count, 1, 1, width)]

    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        out = out.contiguous(memory_format=torch.channels_last)
    return out


def augment_batch(
    x: Tensor,
    generator: torch.Generator | None = None,
    *,
    padding: int = 4,
    fill: Sequence[float] = CIFAR10_PAD_FILL,
) -> Tensor:
    """The log's CIFAR-10 augmentation for a whole batch: random crop with padding, random flip.

    Equivalent to torchvision's ``RandomCrop(H, padding=4)`` and ``RandomHorizontalFlip()`` on
    each raw image before ``Normalize``: the default ``fill`` is the normalised value of a black
    pixel, which is what torchvision pads the raw image with. Per sample it draws a row and a
    column offset, each uniform on ``0..2*padding``, then a flip with probability 1/2, in that
    order, from ``generator`` (torch's global RNG if None; the draws happen on the generator's
    device and move to ``x``'s). Returns a new tensor; ``x`` is not modified.
    """
    count = x.shape[0]
    device = generator.device if generator is not None else torch.device("cpu")
    top = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (count,), generator=generator, device=device)
    flip = torch.rand(count, generator=generator, device=device) < 0.5
    return crop_and_flip(x, top, left, flip, padding=padding, fill=fill)
