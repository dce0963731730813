// The commands run in-process, and OpenBLAS's thread count is process-wide: every CpuBackend sets it, and tests build
// backends with 1 thread while others compare repeated command runs bit for bit. A GEMM's rounding depends on its
// thread count, so test classes run one at a time here (a flake seen twice in eight runs before).
[assembly: CollectionBehavior(DisableTestParallelization = true)]
