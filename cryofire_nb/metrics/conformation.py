"""Conformation metrics on the latent codes z: PC1, the confusion error for discrete
states, |Spearman| between PC1 and a continuous truth, and an oracle linear probe.

Dimension letters: n images, k latent dimension, K number of discrete states.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy.stats import spearmanr

from ..errors import InputError


def _latents(z) -> np.ndarray:
    z = np.asarray(z.detach().cpu() if hasattr(z, "detach") else z, dtype=np.float64)
    if z.ndim == 1:
        z = z[:, None]
    if z.ndim != 2 or z.shape[0] < 2:
        raise InputError(None, f"z has shape {z.shape}, expected (n, k) with n >= 2",
                         "pass one latent vector per image")
    if not np.isfinite(z).all():
        raise InputError(None, "z contains NaN or infinite values", "check the latents file")
    return z


@dataclass(frozen=True)
class PC1:
    """First principal component of z. scores: (n,) projections of the centred z on the
    unit loading vector; explained_variance_ratio: its share of the total variance.
    Sign fixed so that the loading's largest-magnitude entry is positive."""

    scores: np.ndarray
    loading: np.ndarray
    explained_variance_ratio: float


def pca_pc1(z) -> PC1:
    """PC1 of ``z`` (n, k) by eigendecomposition of the (k, k) covariance."""
    z = _latents(z)
    zc = z - z.mean(0)
    cov = zc.T @ zc / (len(z) - 1)  # (k, k)
    evals, evecs = np.linalg.eigh(cov)
    v = evecs[:, -1]
    v = v * np.sign(v[np.argmax(np.abs(v))])
    total = float(evals.sum())
    return PC1(zc @ v, v, float(evals[-1] / total) if total > 0 else 1.0)


@dataclass(frozen=True)
class ConfusionResult:
    """Best separation of K classes by K - 1 thresholds on PC1.

    error_fraction: fraction of images misclassified when class ``class_order[j]`` is
        assigned to the j-th interval of PC1 (intervals split at ``thresholds``,
        ascending); the order and thresholds minimise it. n_misclassified: the count.
    exhaustive: True when all K! class orders were tried; otherwise only the order of the
        class means of PC1 and its reverse.
    """

    error_fraction: float
    n_misclassified: int
    thresholds: tuple[float, ...]
    class_order: tuple[int, ...]
    n_classes: int
    exhaustive: bool

    def to_dict(self) -> dict:
        return {"error_fraction": self.error_fraction, "n_misclassified": self.n_misclassified,
                "thresholds": [t if np.isfinite(t) else None for t in self.thresholds],
                "class_order": list(self.class_order),
                "n_classes": self.n_classes, "exhaustive": self.exhaustive}


def _best_segmentation(onehot_prefix: np.ndarray, valid: np.ndarray,
                       orders: list[tuple[int, ...]]):
    """Dynamic program over sorted values. ``onehot_prefix[c, j]`` counts class c among
    the first j sorted points (K, n+1); ``valid[j]`` says a cut may sit before point j.
    For an order (c_1..c_K), ``f_k[j]`` = most points correctly labelled when the first j
    points are split into k consecutive (possibly empty) runs labelled c_1..c_k:
    ``f_k[j] = max_{i <= j, valid i} (f_{k-1}[i] - P_{c_k}[i]) + P_{c_k}[j]``.
    Prefixes shared by several orders are computed once (depth-first)."""
    n1 = onehot_prefix.shape[1]
    idx = np.arange(n1)
    f0 = np.full(n1, -np.inf)
    f0[0] = 0.0
    best = (-np.inf, None, None)
    prefixes = {(): (f0, [])}  # prefix -> (f, list of argmax arrays)
    for order in orders:
        for k in range(1, len(order) + 1):
            key = order[:k]
            if key in prefixes:
                continue
            f_prev, args = prefixes[order[:k - 1]]
            p = onehot_prefix[order[k - 1]]
            g = np.where(valid, f_prev - p, -np.inf)
            run = np.maximum.accumulate(g)
            arg = np.maximum.accumulate(np.where(g == run, idx, 0))
            prefixes[key] = (run + p, args + [arg])
        f, args = prefixes[order]
        if f[-1] > best[0]:
            best = (f[-1], order, args)
    score, order, args = best
    cuts, j = [], n1 - 1  # backtrack: the run of class k starts at args[k-1][end]
    for arg in reversed(args[1:]):
        j = int(arg[j])
        cuts.append(j)
    return int(round(score)), order, cuts[::-1]


def confusion_error(z, labels, max_exhaustive_classes: int = 6) -> ConfusionResult:
    """Confusion error of K discrete states from the latents ``z`` (n, k) or PC1 (n,).

    PC1 of ``z`` is sorted; classes are assigned to consecutive intervals of PC1 in some
    order; the K - 1 cut points (between distinct PC1 values only) and the order that
    misclassify the fewest images are found exactly by dynamic programming (for K = 2
    this is the exhaustive scan over all thresholds in both orientations). All K! orders
    are tried when ``K <= max_exhaustive_classes``, else the order of the class means on
    PC1 and its reverse. The error is the fraction misclassified (0 = separable).
    """
    z = _latents(z)
    labels = np.asarray(labels).reshape(-1)
    if len(labels) != len(z):
        raise InputError(None, f"{len(labels)} labels for {len(z)} latent vectors",
                         "pass one label per image")
    classes, y = np.unique(labels, return_inverse=True)
    n_cls = len(classes)
    pc = z[:, 0] if z.shape[1] == 1 else pca_pc1(z).scores
    order_idx = np.argsort(pc, kind="stable")
    x, ys = pc[order_idx], y[order_idx]
    onehot = np.zeros((n_cls, len(x) + 1))
    onehot[ys, np.arange(1, len(x) + 1)] = 1
    prefix = np.cumsum(onehot, axis=1)  # (K, n+1)
    valid = np.ones(len(x) + 1, dtype=bool)
    valid[1:-1] = x[1:] > x[:-1]
    exhaustive = n_cls <= max_exhaustive_classes
    if exhaustive:
        orders = list(itertools.permutations(range(n_cls)))
    else:
        means = np.array([x[ys == c].mean() for c in range(n_cls)])
        up = tuple(int(c) for c in np.argsort(means, kind="stable"))
        orders = [up, up[::-1]]
    correct, order, cuts = _best_segmentation(prefix, valid, orders)
    thresholds = []
    for c in cuts:
        lo = x[c - 1] if c > 0 else -np.inf
        hi = x[c] if c < len(x) else np.inf
        thresholds.append(float((lo + hi) / 2))  # +-inf for an empty end run
    wrong = len(x) - correct
    return ConfusionResult(wrong / len(x), wrong, tuple(thresholds),
                           tuple(classes[list(order)].tolist()), n_cls, exhaustive)


@dataclass(frozen=True)
class ClusterMatch:
    """Best one-to-one matching of predicted cluster labels to true classes.

    error_fraction: fraction of images whose cluster is not matched to their true class
        (clusters left unmatched, when there are more clusters than classes, count as
        errors). n_misclassified: the count. mapping: predicted label -> true class for
        the matched clusters. contingency: (n_pred, n_true) counts, rows and columns in
        the order of ``pred_labels`` and ``true_labels`` (sorted unique values).
    """

    error_fraction: float
    n_misclassified: int
    mapping: dict
    contingency: np.ndarray


def cluster_label_error(pred_labels, true_labels) -> ClusterMatch:
    """Misclassification of unsupervised cluster labels (k-means, GMM) against the true
    discrete states, after the label permutation that maximises the agreement
    (Hungarian assignment on the contingency table, scipy ``linear_sum_assignment``).

    Comparable with :func:`confusion_error`, which instead cuts PC1 at optimal
    thresholds; both are 0 for a perfect split and about the minority fraction for a
    useless one."""
    from scipy.optimize import linear_sum_assignment

    pred = np.asarray(pred_labels).reshape(-1)
    true = np.asarray(true_labels).reshape(-1)
    if len(pred) != len(true) or len(pred) == 0:
        raise InputError(None, f"{len(pred)} predicted labels for {len(true)} true labels",
                         "pass one label of each kind per image")
    p_cls, p = np.unique(pred, return_inverse=True)
    t_cls, t = np.unique(true, return_inverse=True)
    table = np.zeros((len(p_cls), len(t_cls)), dtype=np.int64)
    np.add.at(table, (p, t), 1)
    rows, cols = linear_sum_assignment(-table)
    correct = int(table[rows, cols].sum())
    mapping = {p_cls[r].item(): t_cls[c].item() for r, c in zip(rows, cols)}
    wrong = len(pred) - correct
    return ClusterMatch(wrong / len(pred), wrong, mapping, table)


def spearman_pc1(z, truth) -> float:
    """|Spearman rank correlation| between PC1 of ``z`` and a ground-truth coordinate
    (continuous, or a state index): invariant to the sign of PC1."""
    z = _latents(z)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    if len(t) != len(z):
        raise InputError(None, f"{len(t)} truth values for {len(z)} latent vectors",
                         "pass one value per image")
    pc = z[:, 0] if z.shape[1] == 1 else pca_pc1(z).scores
    rho = spearmanr(pc, t).statistic
    return float(abs(rho)) if np.isfinite(rho) else 0.0


def linear_probe_r2(z, truth, n_folds: int = 5, seed: int = 0) -> float:
    """Oracle linear probe: cross-validated R^2 of ``truth`` (n,) predicted from ``z``
    (n, k) by least squares with an intercept, using out-of-fold predictions over
    ``n_folds`` random folds: ``1 - sum (t - t_hat)^2 / sum (t - mean t)^2``.
    Uses the truth, so it measures what z encodes, not what an unsupervised user sees."""
    z = _latents(z)
    t = np.asarray(truth, dtype=np.float64).reshape(-1)
    if len(t) != len(z):
        raise InputError(None, f"{len(t)} truth values for {len(z)} latent vectors",
                         "pass one value per image")
    x = np.concatenate([z, np.ones((len(z), 1))], axis=1)
    folds = np.random.default_rng(seed).permutation(len(z)) % max(2, n_folds)
    pred = np.empty_like(t)
    for f in np.unique(folds):
        test = folds == f
        coef = np.linalg.lstsq(x[~test], t[~test], rcond=None)[0]
        pred[test] = x[test] @ coef
    sst = float(((t - t.mean()) ** 2).sum())
    return 1.0 - float(((t - pred) ** 2).sum()) / sst if sst > 0 else 0.0


@dataclass(frozen=True)
class ConformationMetrics:
    """Conformation metrics of one run (fields are None when their truth is absent).

    pc1_explained_variance_ratio: share of the variance of z on PC1.
    confusion: :func:`confusion_error` against the discrete labels.
    spearman_pc1_labels: |Spearman(PC1, state index)| (useful for many ordered states).
    spearman_pc1_conf: |Spearman(PC1, continuous truth)|.
    linear_probe_r2: :func:`linear_probe_r2` of the continuous truth.
    """

    pc1_explained_variance_ratio: float
    confusion: ConfusionResult | None = None
    spearman_pc1_labels: float | None = None
    spearman_pc1_conf: float | None = None
    linear_probe_r2: float | None = None

    def to_dict(self) -> dict:
        return {"pc1_explained_variance_ratio": self.pc1_explained_variance_ratio,
                "confusion": None if self.confusion is None else self.confusion.to_dict(),
                "spearman_pc1_labels": self.spearman_pc1_labels,
                "spearman_pc1_conf": self.spearman_pc1_conf,
                "linear_probe_r2": self.linear_probe_r2}


def conformation_metrics(z, gt_conf=None, gt_labels=None) -> ConformationMetrics:
    """All conformation metrics that the given truths allow."""
    pc1 = pca_pc1(z)
    conf = spear_l = spear_c = r2 = None
    if gt_labels is not None:
        conf = confusion_error(z, gt_labels)
        if conf.n_classes > 2:
            spear_l = spearman_pc1(z, gt_labels)
    if gt_conf is not None:
        gt = np.asarray(gt_conf, dtype=np.float64)
        if gt.ndim == 1 or gt.shape[-1] == 1:
            spear_c = spearman_pc1(z, gt.reshape(-1))
            r2 = linear_probe_r2(z, gt.reshape(-1))
    return ConformationMetrics(pc1.explained_variance_ratio, conf, spear_l, spear_c, r2)
