"""Torch full-batch L-BFGS vs scikit-learn lbfgs for the softmax head, on synthetic CNN codes.

Run: ``python benchmarks/bench_heads.py [--quick]``. Prints a markdown table: fit seconds (best of
``--repeat``), iterations, final objective (sklearn's, float64) and prediction agreement with sklearn.
The result sets ``AUTO_TORCH_MAX_ENTRIES`` in headstart/heads/softmax.py.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from headstart.heads.softmax import auto_solver, lbfgs_sklearn, lbfgs_torch, standardize_stats


def objective(Z: np.ndarray, y_idx: np.ndarray, sw: np.ndarray, W: np.ndarray, b: np.ndarray, C: float) -> float:
    """sklearn's LogisticRegression objective: sum_i sw_i * loss_i + ||W||^2 / (2C), in float64.

    ``W`` has one row for the binary (sigmoid) case and K rows otherwise.
    """
    z = np.asarray(Z, dtype=np.float64) @ W.T + b
    if W.shape[0] == 1:
        z1 = z[:, 0]
        loss = np.logaddexp(0.0, z1) - (y_idx == 1) * z1
    else:
        m = z.max(axis=1, keepdims=True)
        lse = (m + np.log(np.exp(z - m).sum(axis=1, keepdims=True)))[:, 0]
        loss = lse - z[np.arange(len(y_idx)), y_idx]
    return float(sw @ loss + 0.5 * np.sum(W * W) / C)


def synthetic_codes(n: int, d: int, k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Codes that look like pooled ReLU activations: non-negative, float32, correlated, ~40% zeros.

    Classes live in a low-dimensional latent space mixed into D features, with overlap so the
    problem is not separable (separable data makes every solver crawl towards C-limited norms).
    """
    rng = np.random.default_rng(seed)
    latent = 32
    y = rng.integers(0, k, n)
    centers = rng.normal(0.0, 1.0, (k, latent))
    h = centers[y] + rng.normal(0.0, 1.5, (n, latent))
    mix = rng.normal(0.0, 1.0 / np.sqrt(latent), (latent, d))
    x = h @ mix + rng.normal(0.0, 0.5, (n, d)) + 0.5
    return np.maximum(x, 0.0).astype(np.float32), y


def timed(fn: Callable[[], tuple[np.ndarray, np.ndarray, int]], repeat: int):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="only N=1000")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--tol", type=float, default=1e-6)
    ap.add_argument("--max-iter", type=int, default=500)
    args = ap.parse_args()
    k, C = 6, 1.0
    # Warm torch up (first autograd call / thread pool start costs ~1 s once per process).
    lbfgs_torch(np.ones((8, 2)), np.arange(8) % 2, np.ones(8), 1.0, 2, max_iter=2, tol=1e-3)
    warnings.simplefilter("ignore", ConvergenceWarning)

    load = os.getloadavg()[0]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, load {load:.1f}; "
          f"K={k}, C={C}, tol={args.tol}, best of {args.repeat}\n")
    print("| N | D | solver | seconds | iters | objective | pred. agreement vs sklearn |")
    print("|---|---|---|---|---|---|---|")
    for n in (1000,) if args.quick else (1000, 10000):
        for d in (320, 1280):
            X, y = synthetic_codes(n, d, k)
            mean, scale = standardize_stats(X, True)
            Z = ((X - mean) / scale).astype(np.float32)  # what the head sees (float32 codes)
            sw = np.ones(n)

            def sk() -> tuple[np.ndarray, np.ndarray, int]:  # what the head runs: 1 BLAS thread
                return lbfgs_sklearn(Z, y, sw, C, max_iter=args.max_iter, tol=args.tol)

            def sk_default() -> tuple[np.ndarray, np.ndarray, int]:  # plain sklearn, default threads
                lr = LogisticRegression(C=C, tol=args.tol, max_iter=args.max_iter).fit(Z, y)
                return lr.coef_.astype(np.float64), lr.intercept_.astype(np.float64), int(np.max(lr.n_iter_))

            def th(dtype: torch.dtype) -> Callable[[], tuple[np.ndarray, np.ndarray, int]]:
                return lambda: lbfgs_torch(Z, y, sw, C, k, max_iter=args.max_iter, tol=args.tol, dtype=dtype)

            results = {}
            solvers = {"sklearn lbfgs": sk, "sklearn, default threads": sk_default,
                       "torch f64": th(torch.float64), "torch f32": th(torch.float32)}
            for name, fn in solvers.items():
                results[name] = timed(fn, args.repeat)
            W_ref, b_ref, _ = results["sklearn lbfgs"][1]
            ref_pred = (Z.astype(np.float64) @ W_ref.T + b_ref).argmax(1)
            for name, (sec, (W, b, it)) in results.items():
                pred = (Z.astype(np.float64) @ W.T + b).argmax(1)
                agree = float(np.mean(pred == ref_pred))
                obj = objective(Z, y, sw, W, b, C)
                print(f"| {n} | {d} | {name} | {sec:.2f} | {it} | {obj:.6f} | {agree:.4f} |")
            print(f"| {n} | {d} | *auto picks* | {auto_solver(n, d, X.dtype)} (float32 codes) | | | |")


if __name__ == "__main__":
    main()
