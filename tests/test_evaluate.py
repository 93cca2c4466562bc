import torch

from udd_fast import EvalProtocol, RealData, evaluate_images, herding_coreset, random_coreset


def clustered_data():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 1, 8, 8, generator=g) * 0.1
    x[:10, :, :4, :4] += 0.8  # each class lights a different region (instance norm ignores brightness)
    x[10:20, :, :4, 4:] += 0.8
    x[20:, :, 4:, :] += 0.8
    x[5] = 1.0  # an outlier of class 0
    return RealData.from_tensors(x, torch.arange(3).repeat_interleave(10))


def test_herding_first_pick_is_nearest_the_class_mean_and_avoids_outliers():
    d = clustered_data()
    flat = lambda t: t.flatten(1)  # noqa: E731
    x, y = herding_coreset(d, 3, embed=flat)
    assert y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in range(3):
        members = d.normalize(d.images[d.by_class[c]]).flatten(1)
        nearest = members[(members - members.mean(0)).norm(dim=1).argmin()]
        torch.testing.assert_close(flat(d.normalize(x[3 * c: 3 * c + 1]))[0], nearest)
    assert not any(torch.equal(img, d.images[5]) for img in x)


def test_random_coreset_is_per_class_and_seeded():
    d = clustered_data()
    a, ya = random_coreset(d, 2, seed=1)
    b, _ = random_coreset(d, 2, seed=1)
    assert torch.equal(a, b) and ya.tolist() == [0, 0, 1, 1, 2, 2]


def test_evaluate_images_learns_separable_classes():
    d = clustered_data()
    r = evaluate_images(d.images, d.labels, d, EvalProtocol(width=16, epochs=100, lr=0.05, repeats=2, dsa="none"),
                        progress=False)
    assert r["mean"] > 90 and r["train_images"] == 30 and len(r["accs"]) == 2 and 0 < r["mue"] <= 1
