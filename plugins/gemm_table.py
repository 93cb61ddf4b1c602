"""lowbit_gemm tile table (data for ``gemm_configs``). Rows: (tokens bucket, N, K, weight storage, activation mode,
group size, SVD-L fused, BM, BN, BK, LC, warps, stages)."""

#: Chosen by compile-time proxies (no GPU); see gemm_configs.
ROWS = []
