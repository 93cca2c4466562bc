"""The decoded cache: prepare once, then the same draws and pixels as streaming; resumable, and refused when it
does not match what it is used for."""
import json
import shutil

import numpy as np
import pytest
import torch

from tiny import write_image_folder
from udd_fast import Distiller, FolderData, RegionConfig, SyntheticSet, UDDConfig, cache as cache_mod
from udd_fast.cache import CachedData, prepare, read_manifest
from udd_fast.cli import main
from udd_fast.errors import UDDError

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"), per_class=9)


@pytest.fixture(scope="module")
def cached(folder, tmp_path_factory):
    return prepare(folder, tmp_path_factory.mktemp("cache") / "c", SIZE, num_workers=2, progress=False)


def g(seed=3):
    return torch.Generator().manual_seed(seed)


def test_cache_gives_the_streamed_pixels(folder, cached):
    fd, cd = FolderData(folder, SIZE, num_workers=0), CachedData(cached, root=folder, size=SIZE)
    assert (cd.classes, cd.num_classes, len(cd), cd.size, cd.channels) == (fd.classes, 3, 27, SIZE, 3)
    assert torch.equal(cd.labels, fd.labels) and cd.files == fd.files and cd.mean == fd.mean
    assert all(torch.equal(a, b) for a, b in zip(cd.by_class, fd.by_class))
    for c in range(3):
        for n in (4, 12):  # without replacement, then with (class holds 9)
            x = cd.class_batch(c, n, g(c))
            assert x.dtype == torch.float32 and x.shape == (n, 3, SIZE, SIZE) and x.is_contiguous()
            assert torch.equal(x, fd.class_batch(c, n, g(c)))
        assert torch.equal(cd.class_batch(c, 2, first=True), fd.class_batch(c, 2, first=True))
    assert all(torch.equal(a, b) for a, b in zip(cd.random_batch(10, g()), fd.random_batch(10, g())))
    assert torch.equal(cd.materialize().images, fd.materialize().images)
    assert cd.images.dtype == np.uint8 and "memory-mapped" in repr(cd)


def test_distilling_from_the_cache_gives_the_streamed_set(folder, cached):
    cfg = UDDConfig(ipc=1, factor=2, width=8, outer=1, inner=2, batch_real=4, net_batches=1, net_batch=6,
                    regions=RegionConfig(policy="activation", p=4), cfc=True, step="loop", precision="fp32")
    sets = []
    for data in (FolderData(folder, SIZE, num_workers=2), CachedData(cached, size=SIZE)):
        torch.manual_seed(0)
        sets.append(Distiller(data, cfg).run(progress=False).images)
    assert torch.equal(*sets)


def test_interrupted_prepare_resumes(folder, cached, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "CHUNK", 4)
    decoded, real_decode = [], FolderData.decode
    workers = []
    init = FolderData.__init__
    monkeypatch.setattr(FolderData, "__init__", lambda self, *a, **k: (workers.append(a[3]), init(self, *a, **k))[1])

    def dies_on_third_chunk(self, index, tolerant=False):
        index = list(index)
        if len(decoded) >= 8:
            raise KeyboardInterrupt
        decoded.extend(index)
        return real_decode(self, index, tolerant)

    monkeypatch.setattr(FolderData, "decode", dies_on_third_chunk)
    out = tmp_path / "c"
    with pytest.raises(KeyboardInterrupt):
        prepare(folder, out, SIZE, num_workers=0, progress=False)
    assert not read_manifest(out)["complete"] and (out / "done.txt").read_text() == "0\n1\n"
    with pytest.raises(UDDError, match=r"incomplete \(8 of 27 images decoded\); rerun prepare"):
        CachedData(out)
    with (out / "done.txt").open("a") as f:
        f.write("2")  # a mark cut short by a kill: chunk 2 is decoded again
    decoded.clear()
    monkeypatch.setattr(FolderData, "decode",
                        lambda self, index, tolerant=False: decoded.extend(index) or real_decode(self, index, tolerant))
    prepare(folder, out, SIZE, num_workers=0, progress=False)
    assert decoded == list(range(8, 27))  # the two chunks on record are not decoded again
    assert (out / "done.txt").read_text() == "".join(f"{k}\n" for k in range(7))
    assert read_manifest(out)["complete"]
    assert np.array_equal(CachedData(out).images, CachedData(cached).images)
    decoded.clear()
    prepare(folder, out, SIZE, num_workers=0, progress=False)
    assert decoded == []  # complete: nothing to do
    assert workers == [0, 0, 0]  # the thread count asked for


def test_mismatched_caches_are_refused(folder, cached, tmp_path):
    with pytest.raises(UDDError, match=r"holds 27 images of 3 classes \(blue, green, red\) at 16 px.*not 18 images "
                                       r"of 2 classes \(red, blue\) at 16 px.*another --cache"):
        prepare(folder, cached, SIZE, classes=["red", "blue"], progress=False)
    with pytest.raises(UDDError, match="at 16 px .*not .* at 20 px"):
        prepare(folder, cached, 20, progress=False)
    with pytest.raises(UDDError, match="holds 16 px images, not 24 px"):
        CachedData(cached, size=24)
    with pytest.raises(UDDError, match="not the 2 asked for"):
        CachedData(cached, classes=["red", "blue"])
    with pytest.raises(UDDError, match="no cache at .*python -m udd_fast prepare"):
        CachedData(tmp_path / "nothing")
    moved = shutil.copytree(folder, tmp_path / "grown")
    shutil.copy(moved / "red" / "0.JPEG", moved / "red" / "9.JPEG")
    with pytest.raises(UDDError, match="is stale: .*now lists 28 images.*the cache 27 images"):
        CachedData(cached, root=moved)
    bad = shutil.copytree(cached, tmp_path / "old")
    m = json.loads((bad / "manifest.json").read_text())
    (bad / "manifest.json").write_text(json.dumps({**m, "version": 0}))
    with pytest.raises(UDDError, match="format version 0"):
        CachedData(bad)


def test_cli_prepare_then_distill_from_the_cache(folder, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["prepare", "--data-root", str(folder), "--cache", str(cache), "--size", str(SIZE), "--quiet"]) == 0
    assert "27 images of 3 classes at 16 px" in capsys.readouterr().out
    run = ["distill", "--dataset", "imagefolder", "--ipc", "1", "--outer", "1", "--inner", "1", "--width", "8",
           "--quiet", "--policy", "none", "--no-cfc", "--precision", "fp32"]  # not auto: timed, it may differ
    # size from the cache, for the training images and for the test split of the evaluation
    assert main(run + ["--cache", str(cache), "--test-root", str(folder), "--evaluate", "--epochs", "1", "--repeats",
                       "1", "--protocols", "plain", "--out", str(tmp_path / "cached")]) == 0
    assert main(run + ["--data-root", str(folder), "--size", str(SIZE), "--out", str(tmp_path / "streamed")]) == 0
    a, b = (SyntheticSet.load(tmp_path / d / "synset.safetensors").images for d in ("cached", "streamed"))
    assert torch.equal(a, b)
    assert main(run + ["--cache", str(cache), "--size", "20", "--out", str(tmp_path / "x")]) == 2
    assert "holds 16 px images, not 20 px" in capsys.readouterr().err
    assert main(run[:2] + ["fashion-mnist"] + run[3:] + ["--cache", str(cache), "--out", str(tmp_path / "y")]) == 2
    assert "--cache is for imagefolder datasets" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cache_moves_to_the_gpu_when_it_fits(folder, cached):
    cd, fd = CachedData(cached).to("cuda"), FolderData(folder, SIZE, num_workers=0).to("cuda")
    assert cd.resident is not None and cd.resident.device.type == "cuda"
    assert torch.equal(cd.class_batch(1, 5, g()), fd.class_batch(1, 5, g()))
    mapped = CachedData(cached, resident=0).to("cuda")
    assert mapped.resident is None and torch.equal(mapped.class_batch(1, 5, g()), fd.class_batch(1, 5, g()))
