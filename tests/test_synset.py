import json

import pytest
import torch

from udd_fast.errors import UDDError
from udd_fast.formation import decode, mix_init
from udd_fast.regions import candidate_windows, training_batch
from udd_fast.synset import SyntheticSet


def make_set(factor=1, expand=False):
    torch.manual_seed(0)
    return SyntheticSet(torch.rand(6, 1, 12, 12), torch.arange(3).repeat_interleave(2), "fashion-mnist", 2,
                        (0.28,), (0.35,), factor, expand, config={"lr_img": 1e-4})


def test_save_load_round_trip_without_pickle(tmp_path):
    s = make_set(factor=2, expand=True)
    path = tmp_path / "s.safetensors"
    s.save(path)
    head = path.read_bytes()[:4000]
    assert b"pickle" not in head and b"__reduce__" not in head
    t = SyntheticSet.load(path)
    assert torch.equal(t.images, s.images) and torch.equal(t.labels, s.labels)
    assert (t.dataset, t.ipc, t.mean, t.std, t.factor, t.expand, t.config) == \
        ("fashion-mnist", 2, (0.28,), (0.35,), 2, True, {"lr_img": 1e-4})
    for a, b in zip(s.training_set(), t.training_set()):
        assert torch.equal(a, b)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        assert f.get_tensor("images").dtype == torch.float32 and f.get_tensor("labels").dtype == torch.int64
        assert json.loads(f.metadata()["mean"]) == [0.28]


def test_load_errors(tmp_path):
    with pytest.raises(UDDError, match="no synthetic set"):
        SyntheticSet.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(UDDError, match="not a readable"):
        SyntheticSet.load(bad)


def test_training_set_forms():
    s = make_set()
    x, y = s.training_set()
    assert torch.equal(x, s.images) and torch.equal(y, s.labels)
    x, y = s.training_set(expand=True)
    w = candidate_windows()
    want = training_batch(s.images, w, torch.arange(12).expand(6, -1))
    assert torch.equal(x, want) and x.shape[0] == 6 * 13
    assert y[:6].tolist() == s.labels.tolist() and y[6:18].tolist() == [0] * 12
    f2 = make_set(factor=2)
    x, y = f2.training_set()
    assert torch.equal(x, decode(f2.images, 2)) and y.tolist() == [0] * 8 + [1] * 8 + [2] * 8


def test_mix_init_tiles_downsampled_images():
    real = torch.stack([torch.full((1, 4, 4), float(v)) for v in range(4)])
    img = mix_init(real, 2)
    assert img.shape == (1, 1, 4, 4)
    assert img[0, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]


def test_grid_png(tmp_path):
    s = make_set(factor=2)
    s.grid_png(tmp_path / "g.png")
    s.grid_png(tmp_path / "d.png", decoded=True)
    assert (tmp_path / "g.png").stat().st_size > 100 and (tmp_path / "d.png").stat().st_size > 100
