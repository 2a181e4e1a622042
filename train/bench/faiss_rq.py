#!/usr/bin/env python3
"""Residual k-means with faiss on the same embeddings and settings as `navigen-train bench rq`.

Input: a raw little-endian f32 file of n x d values. Prints one JSON object with seconds and MSE per level.
Needs `pip install faiss-cpu numpy`.
"""
import json
import sys
import time

import faiss
import numpy as np


def main():
    path, n, d, k, levels, iters, seed, threads = sys.argv[1:9]
    n, d, k, levels, iters, seed, threads = map(int, (n, d, k, levels, iters, seed, threads))
    faiss.omp_set_num_threads(threads)
    x = np.fromfile(path, dtype="<f4").reshape(n, d)
    residual = x.copy()
    mse = []
    t0 = time.perf_counter()
    for level in range(levels):
        km = faiss.Kmeans(d, k, niter=iters, seed=seed + level, verbose=False)
        km.train(residual)
        _, assign = km.index.search(residual, 1)
        residual = residual - km.centroids[assign[:, 0]]
        mse.append(float((residual ** 2).sum(axis=1).mean()))
    seconds = time.perf_counter() - t0
    print(json.dumps({"faiss_version": faiss.__version__, "seconds": seconds, "recon_mse": mse, "threads": threads}))


if __name__ == "__main__":
    main()
