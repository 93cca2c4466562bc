"""The cheap diagnostics: window flatness by hand, a policy that must pick the flat corner, CFC's share."""
import pytest
import torch

from udd_fast import UDDConfig
from udd_fast.data import RealData
from udd_fast.diagnose import gradient_shares, window_background, window_flatness
from udd_fast.regions import RegionConfig, candidate_windows

from test_regions import ThresholdNet, planted_images


def test_window_flatness_by_hand():
    x = torch.zeros(1, 1, 6, 6)
    x[0, 0, 3:, 3:] = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    std = window_flatness(x, candidate_windows((1 / 2,)))
    assert std[0, :3].tolist() == [0, 0, 0]  # three flat quarters
    assert std[0, 3].item() == pytest.approx(torch.tensor([0, 1, 0, 1, 0, 1, 0, 1, 0.0]).std().item())


def test_a_policy_that_finds_the_flat_corner_ranks_it_flattest():
    x = planted_images(b=4)
    data = RealData.from_tensors(x, torch.zeros(4, dtype=torch.long))
    cfg = UDDConfig(regions=RegionConfig(p=1))
    r = window_background(data, cfg, x, torch.zeros(4, dtype=torch.long), {"net": ThresholdNet()},
                          policies=("activation", "random"))
    assert {k: r["policies"]["net/activation"][k] for k in ("flatness_rank", "flat_share")} == {
        "flatness_rank": 0.0, "flat_share": 1.0}
    assert 0 < r["policies"]["net/activation"]["mue_s_train"] <= 1 and 0 < r["mue_images"]["net"] <= 1
    assert r["flat_share_all"] == pytest.approx(1 / 12)


def test_gradient_shares_separate_cfc_from_matching():
    g = torch.Generator().manual_seed(0)
    data = RealData.from_tensors(torch.rand(40, 1, 12, 12, generator=g), torch.arange(40) % 4)
    cfg = UDDConfig(width=8, outer=1, inner=2, batch_real=8, net_batches=1, net_batch=8)
    with_cfc = gradient_shares(data, cfg, after=1)
    without = gradient_shares(data, cfg.replace(cfc=False), after=1)
    for t in ("step 0", "step 1"):
        assert with_cfc[t]["ratio"] > 0  # CFC's share is measured whether or not the run would use it
        for k in ("matching_grad_norm", "cfc_grad_norm"):
            assert with_cfc[t][k] == pytest.approx(without[t][k], rel=1e-5)
    assert gradient_shares(data, cfg.replace(lam=2.0), after=1)["step 0"]["cfc_grad_norm"] == pytest.approx(
        2 * with_cfc["step 0"]["cfc_grad_norm"], rel=1e-4)


def test_diagnose_command_on_the_initialisation_and_on_a_set(tmp_path, monkeypatch, capsys):
    import json

    from udd_fast import cli
    from udd_fast.cli import main

    g = torch.Generator().manual_seed(0)
    tiny = RealData.from_tensors(torch.rand(40, 1, 12, 12, generator=g), torch.arange(40) % 4, name="tiny")
    monkeypatch.setattr(cli, "load_dataset", lambda *a, **k: tiny)
    out = tmp_path / "d"
    assert main(["diagnose", "--dataset", "mnist", "--ipc", "1", "--out", str(out), "--width", "8", "--after", "1",
                 "--quiet"]) == 0
    assert "flatness rank" in out.with_suffix(".md").read_text() and "the initialisation" in capsys.readouterr().out
    assert set(json.loads(out.with_suffix(".json").read_text())["ipc1"]) == {"windows", "gradients", "images"}
    run = tmp_path / "run"
    assert main(["distill", "--dataset", "mnist", "--ipc", "1", "--out", str(run), "--outer", "1", "--inner", "1",
                 "--width", "8", "--precision", "fp32", "--quiet"]) == 0
    assert main(["diagnose", "--dataset", "mnist", "--set", str(run / "synset.safetensors"), "--after", "1",
                 "--quiet"]) == 0
    assert "the distilled set" in capsys.readouterr().out
