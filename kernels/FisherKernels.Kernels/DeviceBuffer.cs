using ILGPU;
using ILGPU.Runtime;

namespace FisherKernels.Backends.Ilgpu;

/// <summary>
/// One pooled device buffer: grown geometrically when a call needs more, never shrunk, so steady-state
/// calls of the same (or smaller) sizes allocate nothing.
/// </summary>
internal sealed class DeviceBuffer<T>(Accelerator accelerator) : IDeviceBuffer where T : unmanaged
{
    private MemoryBuffer1D<T, Stride1D.Dense>? buffer;

    public int Allocations { get; private set; }

    /// <summary>A view of the first <paramref name="length"/> elements (at least one element is allocated).</summary>
    public ArrayView1D<T, Stride1D.Dense> Take(long length)
    {
        if (buffer == null || buffer.Length < length)
        {
            long capacity = Math.Max(Math.Max(length, 1), buffer == null ? 0 : buffer.Length * 2);
            buffer?.Dispose();
            buffer = null;
            try { buffer = accelerator.Allocate1D<T>(capacity); Allocations++; }
            catch (Exception e) when (e is not FisherKernelsException)
            {
                throw new FisherKernelsException(ErrorKind.OutOfMemory,
                    $"{accelerator.Name}: cannot allocate {capacity} elements of device memory: {e.Message}", e);
            }
        }
        return buffer.View.SubView(0, Math.Max(length, 1));
    }

    /// <summary>Takes <paramref name="source"/>.Length elements and copies the host data into them.</summary>
    public ArrayView1D<T, Stride1D.Dense> Upload(ReadOnlySpan<T> source)
    {
        var view = Take(source.Length);
        if (!source.IsEmpty) view.SubView(0, source.Length).CopyFromCPU(accelerator.DefaultStream, source);
        return view;
    }

    public void Dispose()
    {
        buffer?.Dispose();
        buffer = null;
    }
}

/// <summary>A pooled device buffer of any element type.</summary>
internal interface IDeviceBuffer : IDisposable
{
    /// <summary>How many times the buffer was (re)allocated.</summary>
    int Allocations { get; }
}
