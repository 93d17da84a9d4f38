"""Refit the classifier's gain head on a deployment's labels, centred on the live head. Pure
computation (numpy, scipy's L-BFGS); `flashpro learn` (router/offline/learn.py) calls it.

The training sets behind the shipped head are not shipped, so they enter as a prior: the refit
minimises the labels' soft log loss plus `strength / 2 * |w - w_live|^2`, so with few labels the
head stays the live one and a word the labels keep marking moves it. Only the hashed buckets seen in
at least MIN_ROWS rows and the dense features move; every other weight is the live head's.

The refit changes the order of requests, not the level of the scores: the new head's bias is
set so that its mean margin over the fitted rows equals the live head's, so the blend and the
calibration (kept from the live classifier) still turn a policy's `shares` into thresholds that
mean about the same share of traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from router.routing.classify import DifficultyClassifier, Head
from router.routing.features import HASH_BUCKETS, N_FEATURES

STRENGTH = 1.0  # the prior's weight: the shipped gain head's own ridge penalty (train.GAIN_C)
MIN_ROWS = 2  # a hashed bucket moves only when at least this many fitted rows have it
MAX_ITERATIONS = 500


@dataclass(frozen=True, slots=True)
class Rows:
    """Fitted rows as sparse features (indices and values per row) with soft targets in [0, 1]
    (the chance the strong tier's answer is better) and weights."""

    indices: Sequence[Sequence[int]]
    values: Sequence[Sequence[float]]
    targets: Sequence[float]
    weights: Sequence[float]


def matrix(indices: Sequence[Sequence[int]], values: Sequence[Sequence[float]]) -> Any:
    """Rows of features as a CSR matrix over every feature index."""
    import scipy.sparse as sp  # type: ignore[import-untyped]

    indptr = np.cumsum([0, *(len(row) for row in indices)])
    flat = np.fromiter((i for row in indices for i in row), np.int64, int(indptr[-1]))
    data = np.fromiter((v for row in values for v in row), np.float64, int(indptr[-1]))
    return sp.csr_matrix((data, flat, indptr), shape=(len(indices), N_FEATURES))


def margins(head: Head, x: Any) -> np.ndarray:
    return np.asarray(x @ head.weights.astype(np.float64) + head.bias).ravel()


def refit_gain(live: Head, rows: Rows, strength: float = STRENGTH) -> Head:
    """The gain head that fits `rows` under the prior centred on `live` (module docstring)."""
    import scipy.sparse as sp
    from scipy.optimize import minimize  # type: ignore[import-untyped]

    x = matrix(rows.indices, rows.values)
    targets = np.asarray(rows.targets, float)
    weights = np.asarray(rows.weights, float)
    base = margins(live, x)
    seen = np.bincount(x[:, :HASH_BUCKETS].indices, minlength=HASH_BUCKETS)
    buckets = np.flatnonzero(seen >= MIN_ROWS)
    dense = x[:, HASH_BUCKETS:].toarray()
    # Centred (the bias absorbs the mean) but not scaled: the dense features are built on about
    # a unit scale, and scaling by the labels' spread would let a feature that barely varies
    # among the labels take a huge weight, which requests unlike the labels would then feel.
    mean = dense.mean(0)
    xs = sp.hstack([x[:, buckets], sp.csr_matrix(dense - mean)]).tocsr()
    xt = xs.T.tocsr()

    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        u, shift = theta[:-1], theta[-1]
        m = base + xs @ u + shift
        p = 0.5 * (1.0 + np.tanh(0.5 * m))  # the logistic function, without overflow
        value = float(weights @ (np.logaddexp(0.0, m) - targets * m)) + 0.5 * strength * (u @ u)
        residual = weights * (p - targets)
        gradient = np.r_[xt @ residual + strength * u, residual.sum()]
        return value, gradient

    start = np.zeros(xs.shape[1] + 1)
    result = minimize(loss, start, jac=True, method="L-BFGS-B", options={"maxiter": MAX_ITERATIONS})
    u = np.asarray(result.x[:-1], float)
    fitted = live.weights.astype(np.float64)
    fitted[buckets] += u[: len(buckets)]
    moved = u[len(buckets) :]
    fitted[HASH_BUCKETS:] += moved
    bias = live.bias + float(result.x[-1]) - float(moved @ mean)
    head = Head(fitted.astype(np.float32), bias)
    level = float(weights @ (base - margins(head, x)) / max(weights.sum(), 1e-12))
    return Head(head.weights, bias + level)


def with_gain(
    current: DifficultyClassifier, gain: Head, info: dict[str, str | float]
) -> DifficultyClassifier:
    """`current` with another gain head; its difficulty head, blend, calibration and reference
    stay (module docstring)."""
    return DifficultyClassifier(
        current.difficulty,
        gain,
        current.blend,
        current.calibration,
        current.reference,
        {**current.info, **info},
    )
