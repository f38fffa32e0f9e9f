import numpy as np
import pytest
import torch
from scipy import stats

from lga_zoo import metrics as M


def random_maps(seed=0, shape=(6, 16, 16)):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def tied_maps(seed=1, shape=(6, 16, 16)):
    # Few distinct values: many ties, as in ReLU maps with exact zeros.
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 4, shape, generator=g).float() / 3
    b = torch.randint(0, 3, shape, generator=g).float() / 2
    a[0] = 0.5  # one constant map
    return a, b


CASES = [random_maps, tied_maps]


@pytest.mark.parametrize("make", CASES)
def test_rank_correlations_match_scipy(make):
    a, b = make()
    tau = M.kendall_tau(a, b)
    rho = M.spearman(a, b)
    for i in range(len(a)):
        x, y = a[i].flatten().numpy(), b[i].flatten().numpy()
        ref_tau = stats.kendalltau(x, y).statistic
        ref_rho = stats.spearmanr(x, y).statistic
        ref_tau = 0.0 if np.isnan(ref_tau) else ref_tau
        ref_rho = 0.0 if np.isnan(ref_rho) else ref_rho
        assert tau[i].item() == pytest.approx(ref_tau, abs=1e-9)
        assert rho[i].item() == pytest.approx(ref_rho, abs=1e-9)


@pytest.mark.parametrize("make", CASES)
def test_average_ranks_match_rankdata(make):
    a, _ = make()
    ranks = M.average_ranks(a.flatten(1))
    for i in range(len(a)):
        assert np.allclose(ranks[i].numpy(), stats.rankdata(a[i].flatten().numpy()))


@pytest.mark.parametrize("make", CASES)
def test_pearson_cosine_mse_match_numpy(make):
    a, b = make()
    for i in range(len(a)):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        if x.std() > 0 and y.std() > 0:
            assert M.pearson(a, b)[i].item() == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-9)
        else:
            assert M.pearson(a, b)[i].item() == 0.0
        assert M.cosine(a, b)[i].item() == pytest.approx(
            x @ y / (np.linalg.norm(x) * np.linalg.norm(y)), abs=1e-9
        )
        assert M.mse(a, b)[i].item() == pytest.approx(np.mean((x - y) ** 2), abs=1e-12)


@pytest.mark.parametrize("make", CASES)
@pytest.mark.parametrize("k", [0.1, 7, 0.5])
def test_topk_intersection_matches_numpy(make, k):
    a, b = make()
    n = a[0].numel()
    count = max(1, round(k * n)) if isinstance(k, float) else k
    result = M.topk_intersection(a, b, k)
    for i in range(len(a)):
        top_a = set(np.argsort(-a[i].flatten().numpy(), kind="stable")[:count])
        top_b = set(np.argsort(-b[i].flatten().numpy(), kind="stable")[:count])
        assert result[i].item() == pytest.approx(len(top_a & top_b) / count)


def test_topk_identical_and_disjoint():
    a = torch.arange(100.0).view(1, 10, 10)
    assert M.topk_intersection(a, a, 0.1).item() == 1.0
    assert M.topk_intersection(a, -a, 0.1).item() == 0.0
    with pytest.raises(ValueError, match="fraction"):
        M.topk_intersection(a, a, 1.5)


@pytest.mark.parametrize("make", CASES)
def test_ssim_matches_skimage(make):
    metrics = pytest.importorskip("skimage.metrics")
    a, b = make(shape=(4, 24, 24))
    result = M.ssim(a, b)
    for i in range(len(a)):
        ref = metrics.structural_similarity(
            a[i].double().numpy(),
            b[i].double().numpy(),
            data_range=1.0,
            gaussian_weights=True,
            sigma=1.5,
            use_sample_covariance=False,
        )
        assert result[i].item() == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(M.ssim(a, a), torch.ones(len(a), dtype=torch.float64))


def test_similarities_bundle_and_errors():
    a, b = random_maps()
    out = M.similarities(a, b)
    assert set(out) == set(M.SIMILARITIES) and all(v.shape == (len(a),) for v in out.values())
    with pytest.raises(ValueError, match="same shape"):
        M.cosine(a, b[:, :4])
    with pytest.raises(ValueError, match="unknown similarities"):
        M.similarities(a, b, ("kendal",))


def test_kendall_keeps_float64_values_distinct_like_scipy():
    """1 and 1 + 1e-10 are equal in float32; in float64 they are not a tie, as for scipy."""
    a = torch.tensor([[1.0, 1 + 1e-10, 2.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    expected = stats.kendalltau(a[0].numpy(), b[0].numpy()).statistic
    assert M.kendall_tau(a, b).item() == pytest.approx(expected) and expected == pytest.approx(1.0)


@pytest.mark.parametrize("name", M.SIMILARITIES)
def test_every_similarity_refuses_maps_with_nan(name):
    """One NaN pixel gave a plausible Kendall (0.99) and top-k (0.93), a Pearson of 0 and a NaN
    cosine: figures of one pair that disagree without a sign."""
    a, b = random_maps()
    a[2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="map batch a holds NaN or infinite values"):
        M.similarities(a, b, names=(name,))
    with pytest.raises(ValueError, match="map batch b holds NaN or infinite values"):
        M.similarities(b, a.nan_to_num().clone().fill_(float("inf")), names=(name,))


@pytest.mark.parametrize("k", [np.float32(0.1), np.float64(0.1), torch.tensor(0.1)])
def test_topk_fraction_as_numpy_or_tensor_scalar(k):
    a, b = random_maps()
    assert torch.equal(M.topk_intersection(a, b, k), M.topk_intersection(a, b, 0.1))
    assert M.topk_intersection(a, b, np.int64(26)).tolist() == M.topk_intersection(a, b, 26).tolist()
    with pytest.raises(TypeError, match="k='0.1' must be a fraction"):
        M.topk_intersection(a, b, "0.1")


@pytest.mark.parametrize("n", [2, 3, 5, 100, 1025])
@pytest.mark.parametrize("levels", [0, 3, 40])
def test_kendall_matches_scipy_at_lengths_that_are_not_powers_of_two(n, levels):
    """The merge-sort count pads each row to a power of two; ties in a, in b and in both at once."""
    g = torch.Generator().manual_seed(n * 100 + levels)
    a, b = torch.rand(4, n, generator=g), torch.rand(4, n, generator=g)
    if levels:
        a, b = (a * levels).floor(), (b * levels).floor()
    b[1], b[2] = a[1], -a[2]  # perfect agreement and perfect disagreement
    tau = M.kendall_tau(a, b)
    for i in range(4):
        expected = stats.kendalltau(a[i].numpy(), b[i].numpy()).statistic
        assert tau[i].item() == pytest.approx(0.0 if np.isnan(expected) else expected, abs=1e-9)


def test_kendall_on_224x224_maps_matches_scipy():
    a, b = random_maps(seed=3, shape=(2, 224, 224))
    a[1] = (a[1] * 10).floor()  # a ReLU-like map with many ties
    tau = M.kendall_tau(a, b)
    for i in range(2):
        expected = stats.kendalltau(a[i].flatten().numpy(), b[i].flatten().numpy()).statistic
        assert tau[i].item() == pytest.approx(expected, abs=1e-9)
