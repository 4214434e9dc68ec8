"""Ridge regression from frozen embeddings to the true simulator state, scored by R^2.

Features are standardised on the fitting set. The ridge strength is chosen from a grid by
fitting on half of the fitting episodes and scoring on the other half, then refitted on all of
them. One SVD per fit gives every strength of the grid at once.
"""

from __future__ import annotations

import numpy as np

MAX_FIT_FRAMES = 4000
ALPHAS = (1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)


def r2_scores(target: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """Coefficient of determination per output dimension (1 is perfect, 0 is the mean); NaN for a
    dimension that does not vary in `target`."""
    residual = ((target - predicted) ** 2).sum(0)
    total = ((target - target.mean(0)) ** 2).sum(0)
    return np.where(total > 1e-12, 1.0 - residual / np.maximum(total, 1e-12), np.nan)


class LinearProbe:
    def __init__(self, alpha: float):
        self.alpha = alpha

    def fit(self, features: np.ndarray, target: np.ndarray) -> "LinearProbe":
        self.weights, self.mean, self.scale, self.target_mean = _ridge_fits(features, target, [self.alpha])[0]
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.weights + self.target_mean


def _ridge_fits(features: np.ndarray, target: np.ndarray, alphas) -> list:
    x = features.reshape(len(features), -1).astype(np.float64)
    mean, scale = x.mean(0), np.maximum(x.std(0), 1e-6)
    x = (x - mean) / scale
    target_mean = target.mean(0)
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    projected = u.T @ (target - target_mean)
    return [(vt.T @ ((s / (s ** 2 + alpha))[:, None] * projected), mean, scale, target_mean) for alpha in alphas]


def pooled_r2(target: np.ndarray, predicted: np.ndarray) -> float:
    """R^2 over all dimensions at once (variance-weighted, as scikit-learn's 'variance_weighted'):
    a dimension that barely varies in the scored episodes cannot dominate the score."""
    residual = ((target - predicted) ** 2).sum()
    total = ((target - target.mean(0)) ** 2).sum()
    return float(1.0 - residual / max(total, 1e-12))


def choose_alpha(features: np.ndarray, target: np.ndarray, groups: np.ndarray) -> float:
    """The grid strength with the best mean R^2 when fitting on one half of the groups (episodes)."""
    unique = np.unique(groups)
    if len(unique) < 2:
        return 1.0
    first = np.isin(groups, unique[: len(unique) // 2])
    fits = _ridge_fits(features[first], target[first], ALPHAS)
    held_x = features[~first].reshape(int((~first).sum()), -1)
    scores = [pooled_r2(target[~first], ((held_x - m) / sc) @ w + tm) for w, m, sc, tm in fits]
    return ALPHAS[int(np.argmax(scores))]


def evenly_spaced(count: int, limit: int) -> np.ndarray:
    """At most `limit` indices spread evenly over range(count) (keeps the probe's SVD small)."""
    return np.unique(np.linspace(0, count - 1, min(count, limit)).round().astype(np.int64))


def probe_r2(train_features: np.ndarray, train_state: np.ndarray, train_groups: np.ndarray,
             test_features: np.ndarray, test_state: np.ndarray) -> dict:
    """Fit on the training frames, score on the test frames: pooled and per-dimension R^2."""
    keep = evenly_spaced(len(train_features), MAX_FIT_FRAMES)
    train_features, train_state, train_groups = train_features[keep], train_state[keep], train_groups[keep]
    alpha = choose_alpha(train_features, train_state, train_groups)
    probe = LinearProbe(alpha).fit(train_features, train_state)
    predicted = probe.predict(test_features.reshape(len(test_features), -1))
    per_dim = r2_scores(test_state, predicted)
    return {"r2": pooled_r2(test_state, predicted), "r2_per_dim": [None if np.isnan(v) else float(v) for v in per_dim],
            "alpha": alpha}
