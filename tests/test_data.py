"""Datasets: shapes, provenance, checksums, offline failure, augmentation against a slow one."""

import dataclasses
import gzip
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF

from rebel import data
from rebel.data import (
    CIFAR10_PAD_FILL,
    DATASETS,
    NORMALIZATION,
    DatasetChecksumError,
    DatasetUnavailableError,
    augment_batch,
    batches,
    clear_cache,
    crop_and_flip,
    load_dataset,
)

# sha256 of the content (see rebel.data._content_sha256), computed on the development machine.
FASHION_MNIST_CHECKSUM = "ef89b21de5bd163e2e96f4298d4b4db1c127d83f72d94363891772034dbff658"
MNIST1D_CHECKSUM = "b5847e2d4a14f1b18aa5adfaa5a17ea3f63793f9ff038f5c527d4727ed42cf84"

SYNTHETIC_SHAPES = {
    "synthetic-mnist": (1, 28, 28),
    "synthetic-fashion-mnist": (1, 28, 28),
    "synthetic-cifar10": (3, 32, 32),
    "synthetic-mnist1d": (1, 40),
}
OFFLINE_LIMIT_S = 20.0


@pytest.fixture(autouse=True)
def fresh_cache():
    # Each test sees the loader as a new process would; tests that monkeypatch the module's
    # settings must not leave datasets loaded under them in the cache.
    clear_cache()
    yield
    clear_cache()


def test_dataset_names():
    assert DATASETS == (
        "mnist",
        "fashion-mnist",
        "cifar10",
        "mnist1d",
        "synthetic-mnist",
        "synthetic-fashion-mnist",
        "synthetic-cifar10",
        "synthetic-mnist1d",
    )


def test_unknown_dataset_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'.*fashion-mnist.*mnist1d"):
        load_dataset("imagenet")


# ---------------------------------------------------------------------------------------------
# Synthetic datasets
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SYNTHETIC_SHAPES))
def test_synthetic_dataset_shapes_and_provenance(name):
    shape = SYNTHETIC_SHAPES[name]
    dataset = load_dataset(name)
    assert dataset.name == name
    assert dataset.train_x.shape == (data.SYNTHETIC_TRAIN_SIZE, *shape)
    assert dataset.test_x.shape == (data.SYNTHETIC_TEST_SIZE, *shape)
    assert dataset.train_x.dtype == dataset.test_x.dtype == torch.float32
    assert dataset.train_y.dtype == dataset.test_y.dtype == torch.int64
    assert dataset.train_y.shape == (data.SYNTHETIC_TRAIN_SIZE,)
    assert dataset.input_shape == shape
    assert dataset.num_classes == 10
    assert set(dataset.train_y.tolist()) == set(range(10))
    assert dataset.synthetic is True
    assert "SYNTHETIC" in dataset.source
    assert len(dataset.checksum) == 64
    assert abs(dataset.train_x.mean().item()) < 0.1
    assert abs(dataset.train_x.std().item() - 1) < 0.1


@pytest.mark.parametrize("name", list(SYNTHETIC_SHAPES))
def test_synthetic_dataset_is_deterministic_and_leaves_the_global_rng_alone(name):
    torch_state = torch.get_rng_state()
    first = load_dataset(name)
    assert torch.equal(torch.get_rng_state(), torch_state)
    clear_cache()
    second = load_dataset(name)
    assert second is not first
    assert second.checksum == first.checksum
    for field in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(first, field), getattr(second, field))


def test_synthetic_datasets_differ_from_each_other():
    checksums = {load_dataset(name).checksum for name in SYNTHETIC_SHAPES}
    assert len(checksums) == len(SYNTHETIC_SHAPES)


@pytest.mark.parametrize("name", list(SYNTHETIC_SHAPES))
def test_a_linear_probe_beats_chance_on_synthetic_data(name):
    dataset = load_dataset(name)
    torch.manual_seed(0)
    probe = torch.nn.Linear(dataset.train_x[0].numel(), 10)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(50):
        loss = F.cross_entropy(probe(dataset.train_x.flatten(1)), dataset.train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    predictions = probe(dataset.test_x.flatten(1)).argmax(1)
    assert (predictions == dataset.test_y).float().mean().item() > 0.5  # chance is 0.1


def test_loads_are_cached_and_the_dataset_is_frozen():
    dataset = load_dataset("synthetic-mnist")
    assert load_dataset("synthetic-mnist") is dataset
    with pytest.raises(dataclasses.FrozenInstanceError):
        dataset.train_x = torch.zeros(1)
    assert "tensor" not in repr(dataset)  # a summary, not the values
    assert "synthetic-mnist" in repr(dataset)


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST from Debian's dataset-fashion-mnist
# ---------------------------------------------------------------------------------------------

debian_fashion_mnist = pytest.mark.skipif(
    not data.DEBIAN_FASHION_MNIST_DIR.is_dir(),
    reason=f"{data.DEBIAN_FASHION_MNIST_DIR} is absent; "
    "`apt-get install dataset-fashion-mnist` to run this test",
)


@debian_fashion_mnist
def test_fashion_mnist_from_debian(tmp_path):
    dataset = load_dataset("fashion-mnist", tmp_path)
    assert dataset.train_x.shape == (60_000, 1, 28, 28)
    assert dataset.test_x.shape == (10_000, 1, 28, 28)
    assert dataset.train_x.dtype == torch.float32 and dataset.train_y.dtype == torch.int64
    assert torch.bincount(dataset.train_y).tolist() == [6000] * 10
    assert torch.bincount(dataset.test_y).tolist() == [1000] * 10
    assert dataset.checksum == FASHION_MNIST_CHECKSUM
    assert dataset.synthetic is False and dataset.num_classes == 10
    assert "Debian dataset-fashion-mnist" in dataset.source

    # NORMALIZATION holds the training set's statistics, so they come out as 0 and 1.
    assert abs(dataset.train_x.mean().item()) < 1e-3
    assert abs(dataset.train_x.std().item() - 1) < 1e-3
    assert abs(dataset.test_x.mean().item()) < 0.02

    # Same arithmetic as torchvision's ToTensor + Normalize on the raw image.
    raw = torchvision_fashion_mnist_image(tmp_path, 0)
    expected = TF.normalize(raw.float() / 255, *NORMALIZATION["fashion-mnist"])
    assert torch.equal(dataset.train_x[0], expected)

    # A second process finds the decompressed files in place and gets the same content.
    clear_cache()
    again = load_dataset("fashion-mnist", tmp_path)
    assert again.checksum == FASHION_MNIST_CHECKSUM
    assert torch.equal(again.train_x, dataset.train_x)


def torchvision_fashion_mnist_image(root: Path, index: int) -> torch.Tensor:
    from torchvision.datasets import FashionMNIST

    return FashionMNIST(root, train=True, download=False).data[index].unsqueeze(0)


@debian_fashion_mnist
def test_fashion_mnist_with_a_corrupted_raw_file_raises(tmp_path):
    load_dataset("fashion-mnist", tmp_path)
    clear_cache()
    raw_file = tmp_path / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    content = bytearray(raw_file.read_bytes())
    content[1000] ^= 0xFF
    raw_file.write_bytes(bytes(content))

    with pytest.raises(DatasetChecksumError, match="train-images-idx3-ubyte.*sha256.*Delete"):
        load_dataset("fashion-mnist", tmp_path)


@debian_fashion_mnist
def test_fashion_mnist_with_a_different_debian_copy_raises(tmp_path, monkeypatch):
    # A copy of Debian's folder whose labels archive holds different (but valid gzip) content.
    debian_copy = tmp_path / "debian"
    shutil.copytree(data.DEBIAN_FASHION_MNIST_DIR, debian_copy)
    labels = debian_copy / "train-labels-idx1-ubyte.gz"
    content = bytearray(gzip.decompress(labels.read_bytes()))
    content[-1] = (content[-1] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(content)))
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian_copy)

    with pytest.raises(DatasetChecksumError, match="train-labels-idx1-ubyte.*pins"):
        load_dataset("fashion-mnist", tmp_path / "root")


@debian_fashion_mnist
def test_fashion_mnist_with_a_damaged_debian_archive_raises(tmp_path, monkeypatch):
    debian_copy = tmp_path / "debian"
    shutil.copytree(data.DEBIAN_FASHION_MNIST_DIR, debian_copy)
    labels = debian_copy / "t10k-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])  # truncated
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", debian_copy)

    with pytest.raises(DatasetChecksumError, match="could not decompress.*reinstall"):
        load_dataset("fashion-mnist", tmp_path / "root")
    assert not list((tmp_path / "root").rglob("*.partial"))


# ---------------------------------------------------------------------------------------------
# MNIST-1D
# ---------------------------------------------------------------------------------------------


def test_mnist1d_is_generated_locally_and_keeps_the_global_rngs(monkeypatch):
    # mnist1d's get_dataset would download; make_dataset must be the only path.
    import mnist1d.data

    monkeypatch.setattr(mnist1d.data, "get_dataset", None)
    random.seed(123)
    np.random.seed(123)
    python_state, numpy_state = random.getstate(), np.random.get_state()

    dataset = load_dataset("mnist1d")

    assert random.getstate() == python_state
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1])
    assert after[2:] == numpy_state[2:]
    assert dataset.train_x.shape == (4000, 1, 40)
    assert dataset.test_x.shape == (1000, 1, 40)
    assert dataset.train_x.dtype == torch.float32 and dataset.train_y.dtype == torch.int64
    assert dataset.input_shape == (1, 40) and dataset.num_classes == 10
    assert set(dataset.train_y.tolist()) == set(range(10))
    assert dataset.synthetic is False
    assert "mnist1d" in dataset.source
    assert dataset.checksum == MNIST1D_CHECKSUM


# ---------------------------------------------------------------------------------------------
# Missing real datasets: fail fast and say what to do
# ---------------------------------------------------------------------------------------------


def machine_is_online(name: str, root: Path) -> bool:
    try:
        data._check_mirrors_reachable(name, root)
    except DatasetUnavailableError:
        return False
    return True


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("cifar10", "cifar-10")])
def test_offline_load_fails_quickly_with_what_to_do(name, folder, tmp_path):
    if machine_is_online(name, tmp_path):
        pytest.skip(f"this machine reaches a {name} mirror; the test is about being offline")
    started = time.monotonic()
    with pytest.raises(DatasetUnavailableError) as raised:
        load_dataset(name, tmp_path)
    elapsed = time.monotonic() - started
    print(f"{name}: offline failure after {elapsed:.2f} s")
    assert elapsed < OFFLINE_LIMIT_S
    message = str(raised.value)
    assert repr(name) in message
    assert str(tmp_path / folder) in message
    assert "internet" in message
    assert "no download mirror answered" in message


def test_unreachable_mirrors_fail_quickly(tmp_path, monkeypatch):
    # .invalid never resolves (RFC 2606), so this holds on machines with internet too.
    monkeypatch.setattr(data, "_mirror_urls", lambda name: ["http://mirror.invalid/mnist/"])
    started = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match=r"(?s)mirror\.invalid.*internet"):
        load_dataset("mnist", tmp_path)
    assert time.monotonic() - started < OFFLINE_LIMIT_S


def test_a_hanging_mirror_is_given_up_after_the_timeout(tmp_path, monkeypatch):
    # Stands in for a DNS lookup or connection that never returns.
    monkeypatch.setattr(data, "_probe", lambda url, results: time.sleep(30))
    monkeypatch.setattr(data, "MIRROR_CONNECT_TIMEOUT_S", 0.2)
    started = time.monotonic()
    with pytest.raises(DatasetUnavailableError, match="no answer"):
        load_dataset("cifar10", tmp_path)
    assert time.monotonic() - started < 3


def test_missing_dataset_without_download_raises(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="download=False"):
        load_dataset("cifar10", tmp_path, download=False)
    assert not any(tmp_path.iterdir())  # nothing written


def test_missing_fashion_mnist_suggests_the_debian_package(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-such-dir")
    with pytest.raises(DatasetUnavailableError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", tmp_path, download=False)


def test_unavailable_error_is_a_runtime_error():
    assert issubclass(DatasetUnavailableError, RuntimeError)
    assert issubclass(DatasetChecksumError, RuntimeError)


# ---------------------------------------------------------------------------------------------
# Augmentation and batches
# ---------------------------------------------------------------------------------------------


def slow_crop_and_flip(x, top, left, flip, padding, fill):
    """One sample at a time, the obvious way."""
    out = []
    draws = zip(x, top.tolist(), left.tolist(), flip.tolist(), strict=True)
    for image, row, col, mirrored in draws:
        channels, height, width = image.shape
        padded = torch.empty(channels, height + 2 * padding, width + 2 * padding, dtype=x.dtype)
        for channel in range(channels):
            padded[channel] = fill[channel]
        padded[:, padding : padding + height, padding : padding + width] = image
        crop = padded[:, row : row + height, col : col + width]
        out.append(crop.flip(-1) if mirrored else crop)
    return torch.stack(out)


def test_crop_and_flip_matches_the_slow_version_at_every_offset():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(162, 3, 32, 32, dtype=torch.float64, generator=generator)
    grid = torch.arange(9)
    top = grid.repeat_interleave(9).repeat(2)  # every (top, left) pair, flipped and not
    left = grid.repeat(9).repeat(2)
    flip = torch.arange(162) >= 81
    expected = slow_crop_and_flip(x, top, left, flip, 4, CIFAR10_PAD_FILL)
    assert torch.equal(crop_and_flip(x, top, left, flip), expected)


def test_augment_batch_draws_offsets_then_flips_and_matches_the_slow_version():
    x = torch.randn(2000, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    out = augment_batch(x, torch.Generator().manual_seed(5))

    # The documented draw order: row offsets, column offsets, flips.
    replay = torch.Generator().manual_seed(5)
    top = torch.randint(0, 9, (2000,), generator=replay)
    left = torch.randint(0, 9, (2000,), generator=replay)
    flip = torch.rand(2000, generator=replay) < 0.5
    assert torch.equal(out, slow_crop_and_flip(x, top, left, flip, 4, CIFAR10_PAD_FILL))
    assert set(top.tolist()) == set(range(9)) and set(left.tolist()) == set(range(9))
    assert 0.45 < flip.float().mean().item() < 0.55


def test_augment_batch_equals_torchvision_on_the_raw_image():
    # RandomCrop(32, padding=4) pads the raw image with black; our fill is black, normalised.
    raw = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    mean, std = NORMALIZATION["cifar10"]
    normalised = TF.normalize(raw.float() / 255, mean, std)
    for top, left, mirrored in [(0, 0, False), (8, 3, True), (4, 8, False)]:
        expected = TF.crop(TF.pad(raw, [4], fill=0), top, left, 32, 32)
        expected = TF.hflip(expected) if mirrored else expected
        expected = TF.normalize(expected.float() / 255, mean, std)
        actual = crop_and_flip(
            normalised[None], torch.tensor([top]), torch.tensor([left]), torch.tensor([mirrored])
        )[0]
        torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


def test_augment_batch_is_reproducible_keeps_input_and_memory_format():
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    before = x.clone()
    first = augment_batch(x, torch.Generator().manual_seed(0))
    second = augment_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(first, second)
    assert torch.equal(x, before)
    assert first.is_contiguous(memory_format=torch.channels_last)


def test_augment_batch_rejects_a_fill_of_the_wrong_length():
    with pytest.raises(ValueError, match="fill has 3 values but the images have 1 channels"):
        augment_batch(torch.zeros(2, 1, 28, 28))


def test_batches_cover_every_sample_once():
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    shuffled = list(batches(x, y, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(yb) for _, yb in shuffled] == [4, 4, 2]
    assert sorted(torch.cat([yb for _, yb in shuffled]).tolist()) == list(range(10))
    assert all(torch.equal(xb[:, 0].long(), yb) for xb, yb in shuffled)
    assert torch.cat([yb for _, yb in shuffled]).tolist() != list(range(10))

    in_order = list(batches(x, y, 4, shuffle=False, drop_last=True))
    assert [yb.tolist() for _, yb in in_order] == [[0, 1, 2, 3], [4, 5, 6, 7]]

    with pytest.raises(ValueError, match="10 inputs, 9 labels"):
        list(batches(x, y[:9], 4, shuffle=False))
