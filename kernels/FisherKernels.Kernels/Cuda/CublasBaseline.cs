using System.Runtime.InteropServices;
using FisherKernels.Backends.Ilgpu;
using ILGPU;
using ILGPU.Runtime;
using ILGPU.Runtime.Cuda;

namespace FisherKernels.Backends.Cuda;

/// <summary>
/// cuBLAS as the benchmark baseline of the CUDA backend, on the backend's own CUDA context and stream, with
/// the same host-memory contract (upload the operands, compute, download the result) so that the figures
/// compare kernels, not transfers. libcublas is loaded at run time (ILGPU ships no cuBLAS bindings); where
/// it or a CUDA device is missing, <see cref="TryCreate"/> returns null and the bench falls back to the CPU baseline.
/// cuBLAS is column-major: a row-major matrix is its transpose, which the calls below account for.
/// </summary>
internal sealed unsafe class CublasBaseline : IDisposable
{
    private const int OpN = 0, OpT = 1, FillUpper = 1;
    private static readonly string[] LibraryNames = ["libcublas.so", "libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "cublas64_12.dll", "cublas64_11.dll"];

    private readonly Accelerator accelerator;
    private readonly nint library, handle;
    private readonly delegate* unmanaged<nint, int> destroy;
    private readonly delegate* unmanaged<nint, int, int, int, int, float*, nint, int, float*, nint, int, int> ssyrk;
    private readonly delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, nint, int, float*, nint, int, int> sgemm;
    private readonly delegate* unmanaged<nint, int, int, float*, nint, int, nint, int, nint, int, int> sger;
    private readonly MemoryBuffer1D<float, Stride1D.Dense>?[] buffers = new MemoryBuffer1D<float, Stride1D.Dense>?[7];
    private int onesLength;

    private CublasBaseline(Accelerator accelerator, nint library)
    {
        this.accelerator = accelerator;
        this.library = library;
        var create = (delegate* unmanaged<nint*, int>)NativeLibrary.GetExport(library, "cublasCreate_v2");
        var setStream = (delegate* unmanaged<nint, nint, int>)NativeLibrary.GetExport(library, "cublasSetStream_v2");
        destroy = (delegate* unmanaged<nint, int>)NativeLibrary.GetExport(library, "cublasDestroy_v2");
        ssyrk = (delegate* unmanaged<nint, int, int, int, int, float*, nint, int, float*, nint, int, int>)NativeLibrary.GetExport(library, "cublasSsyrk_v2");
        sgemm = (delegate* unmanaged<nint, int, int, int, int, int, float*, nint, int, nint, int, float*, nint, int, int>)NativeLibrary.GetExport(library, "cublasSgemm_v2");
        sger = (delegate* unmanaged<nint, int, int, float*, nint, int, nint, int, nint, int, int>)NativeLibrary.GetExport(library, "cublasSger_v2");
        accelerator.Bind();
        nint h;
        Check(create(&h), "cublasCreate");
        handle = h;
        Check(setStream(handle, ((CudaStream)accelerator.DefaultStream).StreamPtr), "cublasSetStream");
    }

    public string Name => "cublas";

    /// <summary>cuBLAS on the CUDA device of <paramref name="backend"/>, or null (not a CUDA backend, or no libcublas).</summary>
    public static CublasBaseline? TryCreate(IComputeBackend backend)
    {
        if (backend is not IlgpuBackend { Accelerator: CudaAccelerator accelerator }) return null;
        foreach (string name in LibraryNames)
            if (NativeLibrary.TryLoad(name, out nint library))
                return new CublasBaseline(accelerator, library);
        return null;
    }

    /// <summary>The upper triangle of F ← β·F + α·XᵀX (X row-major [rows × cols]) by cublasSsyrk.</summary>
    public void Syrk(ReadOnlySpan<float> x, int rows, int cols, float alpha, float beta, Span<float> factor)
    {
        var dx = Upload(0, x);
        var df = Upload(1, factor);
        // Row-major X is column-major Xᵀ [cols × rows]: F = Xᵀ·X is (Xᵀ)·(Xᵀ)ᵀ, "no transpose" in cuBLAS terms.
        Check(ssyrk(handle, FillUpper, OpN, cols, rows, &alpha, dx, cols, &beta, df, cols), "cublasSsyrk");
        Download(1, factor);
    }

    /// <summary>dy = x·dWᵀ + dx·Wᵀ + 1·dbᵀ by two cublasSgemm and one cublasSger.</summary>
    public void LinearJvp(ReadOnlySpan<float> x, ReadOnlySpan<float> dx, ReadOnlySpan<float> w, ReadOnlySpan<float> dw,
                          ReadOnlySpan<float> db, int rows, int inFeatures, int outFeatures, Span<float> dy)
    {
        nint px = Upload(0, x), pdx = Upload(1, dx), pw = Upload(2, w), pdw = Upload(3, dw), pdb = Upload(4, db);
        nint pdy = Take(5, (long)rows * outFeatures);
        float zero = 0, one = 1;
        // Column-major dyᵀ [out × rows] = dW [in × out]ᵀ · xᵀ [in × rows].
        Check(sgemm(handle, OpT, OpN, outFeatures, rows, inFeatures, &one, pdw, inFeatures, px, inFeatures, &zero, pdy, outFeatures), "cublasSgemm");
        Check(sgemm(handle, OpT, OpN, outFeatures, rows, inFeatures, &one, pw, inFeatures, pdx, inFeatures, &one, pdy, outFeatures), "cublasSgemm");
        if (!db.IsEmpty)
        {
            nint ones = Ones(rows);
            Check(sger(handle, outFeatures, rows, &one, pdb, 1, ones, 1, pdy, outFeatures), "cublasSger");
        }
        buffers[5]!.View.SubView(0, (long)rows * outFeatures).CopyToCPU(accelerator.DefaultStream, dy);
        accelerator.Synchronize();
    }

    /// <summary>A device vector of <paramref name="length"/> ones (uploaded when the length changes).</summary>
    private nint Ones(int length)
    {
        if (onesLength == length) return buffers[6]!.NativePtr;
        var ones = new float[length];
        Array.Fill(ones, 1f);
        onesLength = length;
        return Upload(6, ones);
    }

    private nint Upload(int slot, ReadOnlySpan<float> data)
    {
        nint pointer = Take(slot, data.Length);
        if (!data.IsEmpty) buffers[slot]!.View.SubView(0, data.Length).CopyFromCPU(accelerator.DefaultStream, data);
        return pointer;
    }

    private void Download(int slot, Span<float> data)
    {
        buffers[slot]!.View.SubView(0, data.Length).CopyToCPU(accelerator.DefaultStream, data);
        accelerator.Synchronize();
    }

    private nint Take(int slot, long length)
    {
        if (buffers[slot] is not { } buffer || buffer.Length < length)
        {
            buffers[slot]?.Dispose();
            buffers[slot] = accelerator.Allocate1D<float>(Math.Max(length, 1));
        }
        return buffers[slot]!.NativePtr;
    }

    private static void Check(int status, string call)
    {
        if (status != 0) throw FisherKernelsException.Backend($"cuBLAS baseline: {call} failed with status {status}");
    }

    public void Dispose()
    {
        foreach (var buffer in buffers) buffer?.Dispose();
        destroy(handle);
        NativeLibrary.Free(library);
    }
}
