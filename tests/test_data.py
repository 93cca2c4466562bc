"""Loaders on small files written in the datasets' own on-disk formats."""
import gzip
import pickle

import numpy as np
import pytest
import torch

from udd_fast.data import CIFAR_FILES, DATASETS, RealData, common_size, load_dataset
from udd_fast.errors import UDDError


def write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist"])
def test_idx_loader(tmp_path, name):
    rng = np.random.default_rng(0)
    d = tmp_path / name
    d.mkdir()
    for split, n in (("train", 30), ("t10k", 10)):
        write_idx(d / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(d / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    train = load_dataset(name, True, tmp_path)
    test = load_dataset(name, False, tmp_path)
    assert train.images.shape == (30, 1, 28, 28) and test.images.shape == (10, 1, 28, 28)
    assert 0 <= train.images.min() and train.images.max() <= 1 and train.num_classes == 10
    assert train.flip == (name == "fashion-mnist")


@pytest.fixture
def skip_checksums(monkeypatch):
    """Generated files cannot match the published checksums; everything after the check is real."""
    import torchvision
    for cls in (torchvision.datasets.CIFAR10, torchvision.datasets.SVHN):
        monkeypatch.setattr(cls, "_check_integrity", lambda self: True)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *a, **k: True)


def test_cifar10_loader_from_its_pickle_batches(tmp_path, skip_checksums):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), "labels": list(range(10))}, f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [str(i) for i in range(10)]}, f)
    d = load_dataset("cifar10", True, tmp_path, download=False)
    assert d.images.shape == (50, 3, 32, 32) and d.num_classes == 10 and d.flip


def test_imagefolder(tmp_path):
    from PIL import Image
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / c / f"{i}.png")
    d = load_dataset("imagefolder", root=tmp_path, size=16, stream=False)
    assert d.images.shape == (6, 3, 16, 16) and d.num_classes == 2 and d.class_batch(1, 2).shape[0] == 2


def test_from_tensors_stats_and_sampling():
    x = torch.rand(20, 3, 8, 8)
    y = torch.arange(20) % 4
    d = RealData.from_tensors(x, y)
    assert len(d.mean) == 3 and d.num_classes == 4
    assert d.class_batch(2, 3).shape == (3, 3, 8, 8)
    torch.testing.assert_close(d.normalize(x).mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)


def test_bad_inputs_give_one_line_errors():
    with pytest.raises(UDDError, match="NaN or Inf"):
        RealData.from_tensors(torch.full((4, 1, 8, 8), float("nan")), torch.arange(4))
    with pytest.raises(UDDError, match="channel"):
        RealData(torch.rand(4, 3, 8, 8), torch.arange(4), (0.5,), (0.5,))
    with pytest.raises(UDDError, match="no samples"):
        RealData.from_tensors(torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 2, 2]))
    with pytest.raises(UDDError, match="ipc=5"):
        RealData.from_tensors(torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1])).check_ipc(5)
    with pytest.raises(UDDError, match="unknown dataset"):
        load_dataset("imagenet-21k")
    with pytest.raises(UDDError, match=r"\(N, C, H, W\)"):
        RealData.from_tensors(torch.rand(4, 8, 8), torch.arange(4))
    with pytest.raises(UDDError, match="0..K-1, got -1"):
        RealData.from_tensors(torch.rand(4, 1, 8, 8), torch.tensor([0, 0, -1, -1]))
    with pytest.raises(UDDError, match="fractional"):
        RealData.from_tensors(torch.rand(4, 1, 8, 8), torch.tensor([0.0, 0.5, 1.0, 1.0]))
    with pytest.raises(UDDError, match=r"\[0, 1\], got 0 .. 255.*divide 0..255 values by 255"):
        RealData.from_tensors(torch.linspace(0, 255, 256).view(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(UDDError, match="normalization"):  # already normalized: negative pixels
        RealData.from_tensors(torch.randn(4, 1, 8, 8), torch.arange(4))
    with pytest.raises(UDDError, match="no images"):
        RealData.from_tensors(torch.empty(0, 1, 8, 8), torch.empty(0, dtype=torch.long))


def test_uint8_pixels_are_scaled_and_flips_are_opt_in():
    """uint8 images are read as 0..255; mirroring is off unless the caller says a mirrored image keeps its class
    (a mirrored digit or letter is another symbol or none)."""
    d = RealData.from_tensors(torch.full((2, 1, 4, 4), 255, dtype=torch.uint8), torch.arange(2))
    assert d.images.max() == 1 and not d.flip
    assert RealData.from_tensors(torch.rand(2, 1, 4, 4), torch.arange(2), flip=True).flip


def test_svhn_loader_from_its_mat_file(tmp_path, skip_checksums):
    from scipy.io import savemat
    rng = np.random.default_rng(2)
    savemat(tmp_path / "train_32x32.mat", {"X": rng.integers(0, 256, (32, 32, 3, 10), dtype=np.uint8),
                                           "y": np.array([[10], [1], [2], [3], [4], [5], [6], [7], [8], [9]])})
    d = load_dataset("svhn", True, tmp_path, download=False)
    assert d.images.shape == (10, 3, 32, 32) and d.labels.tolist() == list(range(10)) and not d.flip


def write_cifar_batches(root, name="cifar10", per_class=5, seed=1):
    """CIFAR's python batches as torchvision downloads them (uint8 rows of 3 x 32 x 32, channel-major)."""
    folder, train_files, test_files, key = CIFAR_FILES[name]
    base = root / folder
    base.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    classes = 10 if name == "cifar10" else 100
    for f in train_files + test_files:
        labels = [c for c in range(classes) for _ in range(per_class)]
        with open(base / f, "wb") as fh:
            pickle.dump({"data": rng.integers(0, 256, (len(labels), 3072), dtype=np.uint8), key: labels}, fh)
    return base


@pytest.mark.parametrize("name,files", [("cifar10", 5), ("cifar100", 1)])
def test_cifar_batches_are_read_without_a_network_or_checksums(tmp_path, name, files):
    base = write_cifar_batches(tmp_path / name, name)
    train, test = load_dataset(name, True, tmp_path, download=False), load_dataset(name, False, tmp_path, download=False)
    classes = 10 if name == "cifar10" else 100
    assert train.images.shape == (files * 5 * classes, 3, 32, 32) and test.images.shape == (5 * classes, 3, 32, 32)
    assert train.num_classes == classes and train.flip and train.mean == DATASETS[name][4]
    with open(base / CIFAR_FILES[name][2][0], "rb") as fh:
        raw = pickle.load(fh)["data"][7].reshape(3, 32, 32)
    torch.testing.assert_close(test.images[7], torch.from_numpy(raw).float() / 255, rtol=0, atol=0)


def write_folder(root, classes, per_class=3, size=32, seed=0, ext="png"):
    from PIL import Image
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:04d}.{ext}")


def test_cifar10_class_folders(tmp_path):
    """The JPEG class-folder layout of CIFAR-10 (train/<class>, test/<class>): classes in sorted order, which is
    CIFAR-10's label order; pixels as decoded, not resized."""
    from PIL import Image
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    write_folder(tmp_path / "train", names[::-1], per_class=2)
    write_folder(tmp_path / "test", names, per_class=1, seed=1)
    train, test = load_dataset("cifar10", True, tmp_path), load_dataset("cifar10", False, tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (10, 3, 32, 32)
    assert train.labels.tolist() == [c for c in range(10) for _ in range(2)] and train.flip
    raw = np.asarray(Image.open(tmp_path / "test" / "cat" / "0000.png")).transpose(2, 0, 1)
    torch.testing.assert_close(test.images[3], torch.from_numpy(raw.copy()).float() / 255, rtol=0, atol=0)
    # a folder that is not CIFAR-10's (3 classes) is not taken for it: torchvision's route is tried and fails
    write_folder(tmp_path / "other" / "train", ["a", "b", "c"])
    with pytest.raises(UDDError, match="cannot load CIFAR10"):
        load_dataset("cifar10", True, tmp_path / "other", download=False)


def test_an_image_folder_takes_its_images_own_size(tmp_path):
    write_folder(tmp_path / "same", ["a", "b"], size=24)
    assert common_size(tmp_path / "same") == 24
    assert load_dataset("imagefolder", root=tmp_path / "same", stream=False).size == 24
    assert load_dataset("imagefolder", root=tmp_path / "same", size=16, stream=False).size == 16
    write_folder(tmp_path / "mixed", ["a"], size=24)
    write_folder(tmp_path / "mixed", ["b"], size=40)
    assert common_size(tmp_path / "mixed") is None
    assert load_dataset("imagefolder", root=tmp_path / "mixed").size == 224
