"""The bad-input catalogue of image folders: what users' folders really hold, each case with its one line.

| file in a class folder | what happens |
|---|---|
| a JPEG cut in half, a text file named `.jpg`, an empty file | left out; one line names them; listed in full |
| CMYK JPEG, 16-bit grayscale PNG, a PNG named `.jpg`, grayscale | decoded like any other image |
| JPEG with an EXIF rotation | decoded as its pixels are stored (torchvision's loader does not rotate) |
| more than --max-unreadable of the files unreadable | refused, one line with the share |
| a class with no readable file | refused, one line naming the class |

Where a run writes, nothing is lost:

| fault | what happens |
|---|---|
| disk full writing a checkpoint, the synthetic set, a results table, the cache's array or its marks | one line naming the file; the previous file byte-identical; the same command with space goes on |
| --out holding another run | refused unless --resume or --overwrite |
| --out that cannot be written | refused before any work |
| Ctrl-C or SIGTERM during distill | the last whole outer iteration kept as the checkpoint; the message says to add --resume; resumed, the set an uninterrupted run gives, bit for bit |
"""
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from udd_fast import UDDConfig, unreadable
from udd_fast.cache import CachedData, prepare
from udd_fast.cli import main
from udd_fast.data import FolderData, decode_image
from udd_fast.distiller import Distiller
from udd_fast.errors import UDDError

SIZE = 16
BAD = {"a/truncated.jpg", "a/garbage.jpg", "a/empty.jpg"}


def jpeg_bytes(array, **kw) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "JPEG", **kw)
    return out.getvalue()


@pytest.fixture
def folder(tmp_path):
    """Two classes of 8 ordinary images each, class ``a`` also holding every oddity of the catalogue."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(8):
            Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    a = root / "a"
    whole = jpeg_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    (a / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (a / "garbage.jpg").write_text("this is not an image\n")
    (a / "empty.jpg").write_bytes(b"")
    Image.new("CMYK", (SIZE, SIZE), (255, 0, 0, 0)).save(a / "cmyk.jpg", "JPEG")
    Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)).save(a / "deep.png")  # 16-bit grayscale
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    tall = np.zeros((SIZE, 2 * SIZE, 3), np.uint8)
    tall[:, :SIZE] = 255  # left half white, as stored
    (a / "rotated.jpg").write_bytes(jpeg_bytes(tall, exif=exif.tobytes(), quality=95))
    Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).save(a / "png-named.jpg", "PNG")
    return root


def test_unreadable_files_are_named_and_the_readable_oddities_decoded(folder):
    for name in BAD:
        with pytest.raises(unreadable.UnreadableImage, match=name.split("/")[1]):
            decode_image(folder / name, SIZE)
    assert (decode_image(folder / "a" / "cmyk.jpg", SIZE)[0] < 30).all()  # cyan: no red
    deep = decode_image(folder / "a" / "deep.png", SIZE)
    assert (deep == 40000 >> 8).all()  # scaled to 8 bits, not clipped to white
    rotated = decode_image(folder / "a" / "rotated.jpg", SIZE)  # resized to 16 x 32, centre 16 x 16 kept
    assert rotated[:, :, :4].mean() > 200 and rotated[:, :, -4:].mean() < 50  # as stored: not rotated


def test_streaming_and_cache_leave_the_same_files_out(folder, tmp_path, capsys):
    stream = FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False)
    assert set(stream.unreadable) == BAD and len(stream) == 16 + 4 and not BAD & set(stream.files)
    line = capsys.readouterr().err
    assert "left out 3 of 23 image files" in line and "the full list" in line and line.count("\n") == 1
    assert json.loads(stream.unreadable_list.read_text())["unreadable"].keys() == BAD
    prepare(folder, tmp_path / "cache", SIZE, num_workers=2, progress=False, max_unreadable=0.5)
    err = capsys.readouterr().err
    assert "left out 3 of 23" in err and str(tmp_path / "cache" / "unreadable.txt") in err
    cached = CachedData(tmp_path / "cache", root=folder, max_unreadable=0.5)
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert set(manifest["unreadable"]) == BAD and manifest["complete"]
    assert cached.files == stream.files and torch.equal(cached.labels, stream.labels)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(cached.class_batch(0, 9, g1), stream.class_batch(0, 9, g2))
    # the two paths give the same synthetic set
    cfg = UDDConfig(ipc=1, factor=2, width=8, outer=1, inner=2, batch_real=8, net_batches=1, net_batch=8)
    sets = [Distiller(d, cfg).run(progress=False).images for d in (stream, cached)]
    assert torch.equal(*sets)


def test_nothing_is_decoded_twice_unless_asked(folder, tmp_path, monkeypatch):
    FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False)
    prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False, max_unreadable=0.5)
    import udd_fast.data as data

    real = data.decode_image
    calls = []
    monkeypatch.setattr(data, "decode_image", lambda p, s: calls.append(p) or real(p, s))
    again = FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False)
    prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False, max_unreadable=0.5)
    assert calls == [] and set(again.unreadable) == BAD
    # a replaced file is checked again (its size and time changed); asked, the cache decodes its chunk again
    Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(folder / "a" / "garbage.jpg", "PNG")
    assert set(FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False).unreadable) == BAD - {
        "a/garbage.jpg"}
    prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False, max_unreadable=0.5, retry_unreadable=True)
    assert set(CachedData(tmp_path / "cache", max_unreadable=0.5).unreadable) == BAD - {"a/garbage.jpg"}


def test_too_many_unreadable_or_an_empty_class_is_refused_in_one_line(folder, tmp_path):
    with pytest.raises(UDDError, match=r"3 of 23 images .* \(13\.0%\) cannot be read, more than the 10\.0% allowed"):
        FolderData(folder, SIZE, num_workers=0, max_unreadable=0.1, progress=False)
    with pytest.raises(UDDError, match="more than the 1.0% allowed"):
        prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False)
    # the cache is complete and kept: a higher limit uses it as it is
    assert len(CachedData(tmp_path / "cache", max_unreadable=0.5)) == 20
    with pytest.raises(UDDError, match=r"ipc=9 must be between 1 and the smallest class size \(8 \(class 'b', "
                                       "readable images only"):
        FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False).check_ipc(9)
    (folder / "c").mkdir()
    (folder / "c" / "x.jpg").write_text("nope")
    with pytest.raises(UDDError, match="class 'c' under .* has no readable image"):
        FolderData(folder, SIZE, num_workers=0, max_unreadable=0.5, progress=False)


def test_distill_on_a_folder_with_bad_files_finishes(folder, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["distill", "--dataset", "imagefolder", "--data-root", str(folder), "--ipc", "1", "--out", str(out),
            "--outer", "1", "--inner", "1", "--width", "8", "--precision", "fp32", "--quiet", "--max-unreadable",
            "0.5"]
    assert main(args) == 0
    assert "left out 3 of 23" in capsys.readouterr().err
    assert main(args[:-2] + ["--out", str(tmp_path / "run2")]) == 2
    assert "more than the 1.0% allowed (--max-unreadable)" in capsys.readouterr().err


# --- nothing lost where a run writes -----------------------------------------------------------------------

def disk_full_at(path):
    """The next write of ``path``'s temporary file fails with a real ENOSPC: it is a link to /dev/full."""
    tmp = path.with_name(path.name + ".tmp") if path.name != "checkpoint.pt" else path.with_name("checkpoint.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to("/dev/full")


@pytest.mark.skipif(not __import__("os").path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_disk_keeps_the_previous_files_and_says_so(tmp_path, monkeypatch):
    from tiny import fixed_net_config, tiny_data
    from test_resume import config

    from udd_fast import reproduce

    run = tmp_path / "run"
    Distiller(tiny_data(), config(outer=2), out_dir=run).run(progress=False)
    for target, what in ((run / "checkpoint.pt", "checkpoint"), (run / "synset.safetensors", "synthetic set")):
        before = target.read_bytes()
        disk_full_at(target)
        with pytest.raises(UDDError, match=f"cannot write {what} .*no space left on the device.*previous "
                                           f"{target.name} is intact.*run the command again \\(distill with --resume\\)"):
            Distiller(tiny_data(), config(outer=2), out_dir=run).run(progress=False)
        assert target.read_bytes() == before and not list(run.glob("*.tmp"))  # byte-identical, nothing half
    # the results table of reproduce
    settings = {"overrides": {}, "larger": None, "protocols": {"plain": reproduce.asdict(reproduce.protocol("plain"))}}
    table = reproduce.Table(tmp_path / "t", "fashion-mnist", "cpu-quick", settings)
    table.put("ipc1/random", {"ipc": 1, "label": "r", "train_images": 10, "mue": 0.5, "eval_wall_s": 1.0,
                              "eval": {"plain": {"mean": 50.0, "std": 1.0}}})
    saved = table.json.read_bytes()
    disk_full_at(table.json)
    with pytest.raises(UDDError, match="cannot write results table .*no space left"):
        table.put("ipc1/herding", dict(table["ipc1/random"]))
    assert table.json.read_bytes() == saved
    # the cache's array: a full disk is found before any decoding
    import os as _os
    monkeypatch.setattr(_os, "posix_fallocate", lambda *a: (_ for _ in ()).throw(OSError(28, "No space left")))
    folder = tmp_path / "folder"
    for c in ("a", "b"):
        (folder / c).mkdir(parents=True)
        Image.new("RGB", (SIZE, SIZE)).save(folder / c / "0.png")
    with pytest.raises(UDDError, match="cannot write cache array .*no space left"):
        prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False)
    assert not (tmp_path / "cache" / "images.npy").exists()
    monkeypatch.undo()
    prepare(folder, tmp_path / "cache", SIZE, num_workers=0, progress=False)  # with space: it goes on
    assert len(CachedData(tmp_path / "cache")) == 2


def test_an_out_that_holds_a_run_or_cannot_be_written_is_refused_first(tmp_path, monkeypatch, capsys):
    from tiny import tiny_data

    from udd_fast import cli

    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: tiny_data(classes=4))
    out = tmp_path / "run"
    args = ["distill", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--outer", "1", "--inner", "1",
            "--width", "8", "--precision", "fp32", "--checkpoint-every", "1", "--quiet"]
    assert main(args) == 0
    first = (out / "synset.safetensors").read_bytes()
    assert main(args) == 2
    assert "already holds a run (synset.safetensors); add --resume" in capsys.readouterr().err
    assert (out / "synset.safetensors").read_bytes() == first
    assert main(args + ["--resume"]) == 0 and main(args + ["--overwrite", "--seed", "1"]) == 0
    assert (out / "synset.safetensors").read_bytes() != first
    (tmp_path / "file").write_text("x")
    assert main(args[:5] + ["--out", str(tmp_path / "file" / "run")] + args[7:]) == 2
    assert "cannot write to" in capsys.readouterr().err


SCRIPT = """
import sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from test_resume import config
from tiny import tiny_data
from udd_fast import Distiller
from udd_fast.errors import Interrupted
fresh = Distiller.fresh_network
def announced(self):  # one line as each outer iteration draws its network
    print("outer", flush=True)
    return fresh(self)
Distiller.fresh_network = announced
try:
    Distiller(tiny_data(), config(outer=6, checkpoint_every=100), out_dir=sys.argv[1]).run(
        progress=False, resume=len(sys.argv) > 2)
except Interrupted as e:
    print(e, file=sys.stderr)
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupted_run_keeps_its_last_outer_iteration_and_resumes_to_the_same_set(tmp_path, sig):
    """No checkpoint is due during the run (every 100 outer iterations): the interrupt itself writes the state
    at the start of the outer iteration it stopped, and --resume ends with the uninterrupted set, bit for bit."""
    import signal
    import subprocess
    import sys
    from pathlib import Path

    from udd_fast import SyntheticSet

    script = SCRIPT.format(tests=str(Path(__file__).parent))

    def launch(out, *extra):
        return subprocess.Popen([sys.executable, "-c", script, str(out), *extra], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    whole, cut = tmp_path / "whole", tmp_path / "cut"
    assert launch(whole).wait(timeout=300) == 0
    proc = launch(cut)
    for _ in range(3):  # inside the third outer iteration
        assert proc.stdout.readline() == "outer\n"
    proc.send_signal(getattr(signal, sig))
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "interrupted in outer iteration 3 of 6" in err and "after 2 outer iteration(s)" in err and "--resume" in err
    assert (cut / "checkpoint.pt").exists() and not (cut / "synset.safetensors").exists()
    assert launch(cut, "resume").wait(timeout=300) == 0
    assert torch.equal(SyntheticSet.load(whole / "synset.safetensors").images,
                       SyntheticSet.load(cut / "synset.safetensors").images)
