"""FolderData: ImageFolder images decoded from disk per batch, with the same draws as the in-memory RealData."""
import re

import pytest
import torch

from udd_fast import FolderData, RealData, herding_coreset, load_dataset, random_coreset
from udd_fast.data import SUBSETS, resolve_classes
from udd_fast.errors import UDDError
from udd_fast.coreset import real_network
from tiny import COLOURS, write_image_folder

SIZE = 16


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("imagefolder"))


def stream(root, **kw):
    kw.setdefault("num_workers", 0)
    return load_dataset("imagefolder", root=root, size=SIZE, **kw)


def g(seed=3):
    return torch.Generator().manual_seed(seed)


def test_default_is_streaming_and_interface(folder):
    d = load_dataset("imagefolder", root=folder, size=SIZE)
    assert isinstance(d, FolderData) and d.num_workers == min(4, __import__("os").cpu_count())
    assert (d.channels, d.size, d.num_classes, d.classes) == (3, SIZE, 3, ["blue", "green", "red"])
    assert [len(i) for i in d.by_class] == [6, 6, 6] and d.by_class[0].dtype == torch.int64
    assert d.to("cpu") is d and d.device == torch.device("cpu")
    assert stream(folder, stream=False).device == torch.device("cpu")


def test_class_batch_streams_the_same_pixels_as_in_memory(folder):
    mem, fd = stream(folder, stream=False), stream(folder)
    assert isinstance(mem, RealData)
    for c in range(3):
        for n in (4, 9):  # without replacement, then with (class holds 6)
            x = fd.class_batch(c, n, g(c))
            assert x.shape == (n, 3, SIZE, SIZE) and x.dtype == torch.float32
            assert 0 <= x.min() and x.max() <= 1
            assert torch.equal(x, mem.class_batch(c, n, g(c)))
    xs, ys = fd.random_batch(10, g())
    xm, ym = mem.random_batch(10, g())
    assert torch.equal(xs, xm) and torch.equal(ys, ym)
    assert torch.equal(fd.normalize(xs), mem.normalize(xm))
    whole = fd.materialize()
    assert torch.equal(whole.images, mem.images) and torch.equal(whole.labels, mem.labels)


def test_random_batch_labels_match_the_folders(folder):
    fd = stream(folder)
    x, y = fd.random_batch(24, g())
    dominant = x.mean((2, 3)).argmax(1)
    assert [fd.classes[i] for i in y.tolist()] == [list(COLOURS)[i] for i in dominant.tolist()]


def test_workers_give_identical_batches(folder):
    a, b = stream(folder, num_workers=0), stream(folder, num_workers=2)
    assert torch.equal(a.class_batch(1, 5, g()), b.class_batch(1, 5, g()))
    assert all(torch.equal(u, v) for u, v in zip(a.random_batch(7, g()), b.random_batch(7, g())))


def test_class_list_file_selects_orders_and_relabels(folder, tmp_path):
    listing = tmp_path / "subset.txt"
    listing.write_text("# two of the three classes\nred\n\n  blue   # trailing comment\n")
    for d in (stream(folder, classes=listing), stream(folder, classes=str(listing), stream=False),
              stream(folder, classes=["red", "blue"])):
        assert d.num_classes == 2 and [len(i) for i in d.by_class] == [6, 6]
        assert d.class_batch(0, 3, g()).mean((0, 2, 3)).argmax() == COLOURS["red"]
        assert d.class_batch(1, 3, g()).mean((0, 2, 3)).argmax() == COLOURS["blue"]
    fd, mem = stream(folder, classes=listing), stream(folder, classes=listing, stream=False)
    assert fd.classes == ["red", "blue"] and torch.equal(fd.class_batch(1, 4, g()), mem.class_batch(1, 4, g()))


def test_bad_inputs_give_clear_errors(folder, tmp_path):
    with pytest.raises(UDDError, match=rf"zebra.*missing under {re.escape(str(folder))}"):
        stream(folder, classes=["red", "zebra"])
    listing = tmp_path / "l.txt"
    listing.write_text("blue\nn01440764\n")
    with pytest.raises(UDDError, match=rf"class list {re.escape(str(listing))} names class folder\(s\) n01440764"):
        stream(folder, classes=listing)
    with pytest.raises(UDDError, match="unknown class list 'imagenet7'.*imagenet10"):
        stream(folder, classes="imagenet7")
    with pytest.raises(UDDError, match="does not exist"):
        stream(tmp_path / "nowhere")
    with pytest.raises(UDDError, match="more than once"):
        stream(folder, classes=["red", "red"])
    (tmp_path / "empty_root" / "cat").mkdir(parents=True)
    with pytest.raises(UDDError, match="no valid file.*cat"):
        stream(tmp_path / "empty_root")
    with pytest.raises(UDDError, match="num_workers"):
        stream(folder, num_workers=-1)
    with pytest.raises(UDDError, match="imagefolder datasets only"):
        load_dataset("mnist", classes="imagenet10")


def test_check_ipc(folder):
    fd = stream(folder)
    fd.check_ipc(6)
    with pytest.raises(UDDError, match=r"ipc=7 must be between 1 and the smallest class size \(6 \(class 'blue'"):
        fd.check_ipc(7)
    with pytest.raises(UDDError, match="factor 2"):
        fd.check_ipc(2, 2)


def test_coresets_run_on_folder_data_and_match_in_memory(folder):
    fd, mem = stream(folder), stream(folder, stream=False)
    x, y = random_coreset(fd, 2, seed=1)
    assert x.shape == (6, 3, SIZE, SIZE) and y.tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.equal(x, random_coreset(mem, 2, seed=1)[0])
    flat = lambda z: z.flatten(1)  # noqa: E731
    hx, hy = herding_coreset(fd, 2, embed=flat)
    assert torch.equal(hx, herding_coreset(mem, 2, embed=flat)[0]) and hy.tolist() == y.tolist()
    feats = real_network(fd, seed=0, steps=2).embed(fd.normalize(x))
    assert feats.shape[0] == 6 and torch.isfinite(feats).all()


def test_shipped_subset_lists():
    assert {"imagenet10", "imagenet100"} <= set(SUBSETS)
    ten, source = resolve_classes("imagenet10")
    hundred, _ = resolve_classes("imagenet100")
    assert "imagenet10" in source and len(ten) == 10 and len(hundred) == len(set(hundred)) == 100
    assert ten == hundred[:10] and ten[0] == "n02869837"
    assert all(re.fullmatch(r"n\d{8}", c) for c in hundred)


def test_cli_imagefolder_resnetap_torchrun_equals_one_process(folder, tmp_path):
    """End to end from image files: a class list, ResNetAp-10, streamed batches, evaluation; and the same run
    under torchrun with 2 gloo processes, from a decoded cache, gives the identical synthetic set (one thread
    per process in both: CPU kernels may round differently with another thread count)."""
    import json
    import os
    import subprocess
    import sys

    from test_distributed import free_port
    from udd_fast import SyntheticSet

    classes = tmp_path / "classes.txt"
    classes.write_text("# two of the three\nred\nblue\n")

    def torchrun(processes, out, *extra):
        r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
                            "--master_addr", "127.0.0.1", "--master_port", str(free_port()), "-m", "udd_fast",
                            "distill", "--dataset", "imagefolder", "--data-root", str(folder), "--size", str(SIZE),
                            "--classes", str(classes), "--workers", "2", "--model", "resnetap10", "--width", "8",
                            "--ipc", "1", "--outer", "1", "--inner", "2", "--policy", "gradient", "--lowest-p", "4",
                            "--precision", "fp32",  # not auto: timed, it may differ between the runs compared
                            "--quiet", "--out", str(tmp_path / out), *extra], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        return SyntheticSet.load(tmp_path / out / "synset.safetensors")

    one = torchrun(1, "one", "--evaluate", "--epochs", "2", "--repeats", "1")
    assert one.images.shape == (2, 3, SIZE, SIZE) and one.config["model"] == "resnetap10"
    metrics = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert metrics["processes"] == 1 and metrics["host_peak_mib"] > 0
    assert all(0 <= scored[k]["mean"] <= 100 for scored in metrics["evaluation"].values() for k in ("set", "init"))
    # 2 processes, real batches from a cache that rank 0 decodes while rank 1 waits, each process repeating
    # the network update (test_distributed checks the split one)
    two = torchrun(2, "two", "--cache", str(tmp_path / "cache"), "--net-update", "repeat")
    assert json.loads((tmp_path / "two" / "metrics.json").read_text())["processes"] == 2
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["complete"]
    assert torch.equal(two.images, one.images)
