// Every fit here uses one-thread CPU backends (OpenBLAS's thread count is process-wide and a GEMM's rounding depends on it),
// and an in-process cluster already runs three silos side by side: test classes run one at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
