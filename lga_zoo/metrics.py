"""Similarity of attribution maps, batched in torch.

Every function takes two batches of maps ``a`` and ``b`` of the same shape (B, H, W) (or (B, N))
and returns one value per map pair, shape (B,). Ties are handled the way scipy.stats does: average
ranks for Spearman, tau-b for Kendall; top-k membership breaks ties by pixel index (stable sort).
"""

from __future__ import annotations

import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

SIMILARITIES = ("topk", "kendall", "spearman", "cosine", "pearson", "ssim", "mse")


def _flat(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    if a.shape != b.shape:
        raise ValueError(f"maps must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dim() < 2:
        raise ValueError(f"maps must be batched (B, H, W) or (B, N), got shape {tuple(a.shape)}")
    _check_finite(a, b)
    return a.flatten(1).double(), b.flatten(1).double()


def _check_finite(a: Tensor, b: Tensor) -> None:
    """Refuse NaN or infinite pixels: each similarity would treat them its own way (a NaN cosine, a
    plausible rank correlation), so the figures of one map pair would disagree without a sign."""
    for name, maps in (("a", a), ("b", b)):
        if not torch.isfinite(maps).all():
            raise ValueError(f"map batch {name} holds NaN or infinite values; similarities need finite maps")


def topk_count(num_pixels: int, k: float | int = 0.1) -> int:
    """k as a count: a float in (0, 1] is a fraction of the pixels, an int a count (numpy scalars
    and one-element tensors count as their Python number)."""
    if isinstance(k, Tensor) and k.numel() == 1:
        k = k.item()
    if isinstance(k, bool) or not isinstance(k, numbers.Real):
        raise TypeError(f"k={k!r} must be a fraction of the pixels (float) or a count (int)")
    if not isinstance(k, numbers.Integral):
        if not 0 < k <= 1:
            raise ValueError(f"k={k} as a fraction must be in (0, 1]")
        return max(1, int(round(k * num_pixels)))
    if not 1 <= k <= num_pixels:
        raise ValueError(f"k={k} must be between 1 and the {num_pixels} pixels")
    return int(k)


def topk_mask(maps: Tensor, k: float | int = 0.1) -> Tensor:
    """Boolean mask of each map's k largest pixels (ties broken by lower pixel index)."""
    flat = maps.flatten(1)
    count = topk_count(flat.shape[1], k)
    order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :count]
    mask = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True)
    return mask.view_as(maps)


def topk_intersection(a: Tensor, b: Tensor, k: float | int = 0.1) -> Tensor:
    """Fraction of a's top-k pixels that are also in b's top-k (k a fraction or a count)."""
    fa, fb = _flat(a, b)
    count = topk_count(fa.shape[1], k)
    return (topk_mask(fa, count) & topk_mask(fb, count)).sum(1).double() / count


def average_ranks(x: Tensor) -> Tensor:
    """Ranks 1..N along dim 1 with ties given their average rank (scipy.stats.rankdata)."""
    x = x.contiguous()
    sorted_x = torch.sort(x, dim=1).values
    left = torch.searchsorted(sorted_x, x, right=False)
    right = torch.searchsorted(sorted_x, x, right=True)
    return (left + right + 1).double() / 2


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of the flattened maps (0 where a map is constant)."""
    fa, fb = _flat(a, b)
    fa = fa - fa.mean(1, keepdim=True)
    fb = fb - fb.mean(1, keepdim=True)
    denom = fa.norm(dim=1) * fb.norm(dim=1)
    return torch.where(denom > 0, (fa * fb).sum(1) / denom.clamp_min(1e-300), torch.zeros_like(denom))


def spearman(a: Tensor, b: Tensor) -> Tensor:
    """Spearman's rho: Pearson correlation of average ranks."""
    fa, fb = _flat(a, b)
    return pearson(average_ranks(fa), average_ranks(fb))


def _tied_pairs(sorted_rows: Tensor, same_as_previous: Tensor) -> Tensor:
    """Unordered pairs inside runs of equal values per row: sum over runs of t(t-1)/2, where
    ``same_as_previous[:, i]`` says whether element i + 1 of the sorted row equals element i."""
    n = sorted_rows.shape[1]
    index = torch.arange(n, device=sorted_rows.device).expand(sorted_rows.shape[0], n)
    starts = torch.ones_like(index, dtype=torch.bool)
    starts[:, 1:] = ~same_as_previous
    run_start = torch.where(starts, index, torch.zeros_like(index)).cummax(1).values
    return (index - run_start).sum(1).double()  # element i closes (i - run start) tied pairs


def _discordant_pairs(b_in_a_order: Tensor) -> Tensor:
    """Pairs i < j with b_i > b_j (strictly) per row: the inversions, counted by a bottom-up merge
    sort whose levels run on all rows and blocks at once (O(N log^2 N) with torch.sort per level)."""
    rows, n = b_in_a_order.shape
    width = 1 << max(0, (n - 1).bit_length())
    pad = torch.full((rows, width - n), float("inf"), dtype=b_in_a_order.dtype, device=b_in_a_order.device)
    blocks = torch.cat([b_in_a_order, pad], 1)  # +inf pads sit at the end: they invert nothing
    inversions = torch.zeros(rows, dtype=torch.float64, device=blocks.device)
    size = 1
    while size < width:
        pairs = blocks.view(rows, -1, 2, size)
        left, right = pairs[:, :, 0].contiguous(), pairs[:, :, 1].contiguous()
        # for each right element, the left elements (an already sorted block) greater than it
        not_greater = torch.searchsorted(left, right, right=True)
        inversions += (size - not_greater).sum((1, 2)).double()
        blocks = torch.sort(pairs.reshape(rows, -1, 2 * size), dim=2).values.reshape(rows, width)
        size *= 2
    return inversions


def kendall_tau(a: Tensor, b: Tensor) -> Tensor:
    """Kendall's tau-b over all pixel pairs, exact, in O(N log^2 N) (Knight's method: sort by a,
    count the inversions of b by merge sort) with scipy.stats.kendalltau's tie handling; 0 where a
    map is constant."""
    fa, fb = _flat(a, b)
    # compared in the inputs' own precision (float32 unless one is float64): values distinct in
    # float64 are not made ties
    work = torch.float64 if torch.float64 in (a.dtype, b.dtype) else torch.float32
    fa, fb = fa.to(work), fb.to(work)
    n = fa.shape[1]
    by_b = torch.sort(fb, dim=1, stable=True).indices  # sort by (a, b): by b, then stably by a
    a_then_b = by_b.gather(1, torch.sort(fa.gather(1, by_b), dim=1, stable=True).indices)
    sa, sb = fa.gather(1, a_then_b), fb.gather(1, a_then_b)
    tied_a = _tied_pairs(sa, sa[:, 1:] == sa[:, :-1])
    tied_both = _tied_pairs(sa, (sa[:, 1:] == sa[:, :-1]) & (sb[:, 1:] == sb[:, :-1]))
    sorted_b = torch.sort(fb, dim=1).values
    tied_b = _tied_pairs(sorted_b, sorted_b[:, 1:] == sorted_b[:, :-1])
    all_pairs = n * (n - 1) / 2
    concordant_minus_discordant = all_pairs - tied_a - tied_b + tied_both - 2 * _discordant_pairs(sb)
    denom = ((all_pairs - tied_a) * (all_pairs - tied_b)).sqrt()
    return torch.where(
        denom > 0, concordant_minus_discordant / denom.clamp_min(1e-300), torch.zeros_like(denom)
    )


def cosine(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of the flattened maps."""
    fa, fb = _flat(a, b)
    return F.cosine_similarity(fa, fb, dim=1, eps=1e-300)


def mse(a: Tensor, b: Tensor) -> Tensor:
    """Mean squared difference per map."""
    fa, fb = _flat(a, b)
    return (fa - fb).pow(2).mean(1)


def _gaussian_window(size: int, sigma: float, dtype, device) -> Tensor:
    coords = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]


def ssim(a: Tensor, b: Tensor, data_range: float = 1.0, sigma: float = 1.5) -> Tensor:
    """Structural similarity of (B, H, W) maps with a Gaussian window (sigma 1.5, 11x11, valid
    region), K1 0.01, K2 0.03, population covariances: the settings of
    ``skimage.metrics.structural_similarity(gaussian_weights=True, use_sample_covariance=False)``."""
    if a.shape != b.shape or a.dim() != 3:
        raise ValueError(
            f"ssim needs two (B, H, W) batches of the same shape, got {tuple(a.shape)}, {tuple(b.shape)}"
        )
    size = 2 * int(3.5 * sigma + 0.5) + 1
    if min(a.shape[1:]) < size:
        raise ValueError(f"ssim needs maps of at least {size}x{size} pixels, got {tuple(a.shape[1:])}")
    _check_finite(a, b)
    x, y = a.double()[:, None], b.double()[:, None]
    window = _gaussian_window(size, sigma, x.dtype, x.device)
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return s.flatten(1).mean(1)


def similarities(
    a: Tensor, b: Tensor, names: tuple[str, ...] = SIMILARITIES, k: float | int = 0.1
) -> dict[str, Tensor]:
    """Every similarity in ``names`` between map batches ``a`` and ``b``: a dict of (B,) tensors."""
    funcs = {
        "topk": lambda: topk_intersection(a, b, k),
        "kendall": lambda: kendall_tau(a, b),
        "spearman": lambda: spearman(a, b),
        "cosine": lambda: cosine(a, b),
        "pearson": lambda: pearson(a, b),
        "ssim": lambda: ssim(a, b),
        "mse": lambda: mse(a, b),
    }
    unknown = [n for n in names if n not in funcs]
    if unknown:
        raise ValueError(f"unknown similarities {unknown}; accepted: {SIMILARITIES}")
    return {name: funcs[name]().float() for name in names}
