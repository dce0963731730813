namespace FisherKernels;

/// <summary>
/// Fork-join for short parallel loops (operators, the accumulation kernel) (tens to hundreds of microseconds). Unlike
/// Parallel.For, the calling thread never waits for a helper that has not started yet: it claims every
/// item the helpers have not, and waits only for items a helper is running. On a busy machine, where a
/// pool thread may take milliseconds to be scheduled, the loop then costs at most its serial time.
/// </summary>
internal static class ParallelWork
{
    private sealed class Loop(int count, Action<int> body)
    {
        public readonly int Count = count;
        public readonly Action<int> Body = body;
        public int Next;
        public int Active;
        public int Closed;
        public Exception? Error;

        /// <summary>Runs items until none is left; the first exception stops the loop and is kept for the caller.</summary>
        public void Work()
        {
            try
            {
                for (int i; (i = Interlocked.Increment(ref Next) - 1) < Count;) Body(i);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref Error, e, null);
                Volatile.Write(ref Next, Count);
            }
        }
    }

    private static readonly Action<Loop> Help = loop =>
    {
        Interlocked.Increment(ref loop.Active);
        // Once the caller has closed the loop, every item is claimed: leave without touching them.
        if (Volatile.Read(ref loop.Closed) == 0) loop.Work();
        Interlocked.Decrement(ref loop.Active);
    };

    /// <summary>Runs <paramref name="body"/>(i) for i in [0, count) on the caller and up to threads − 1 pool threads.</summary>
    public static void For(int count, int threads, Action<int> body)
    {
        if (threads <= 1 || count <= 1)
        {
            for (int i = 0; i < count; i++) body(i);
            return;
        }
        var loop = new Loop(count, body);
        for (int t = 1; t < Math.Min(threads, count); t++) ThreadPool.UnsafeQueueUserWorkItem(Help, loop, preferLocal: false);
        loop.Work();
        Interlocked.Exchange(ref loop.Closed, 1);
        // Spin, then yield, but never Sleep(1): a millisecond nap would cost more than the whole loop.
        var spin = new SpinWait();
        while (Volatile.Read(ref loop.Active) != 0) spin.SpinOnce(sleep1Threshold: -1);
        if (loop.Error is { } error) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(error);
    }

    /// <summary>
    /// Runs <paramref name="body"/>(start, count) over disjoint ranges covering [0, <paramref name="length"/>), each
    /// of at least <paramref name="minimum"/> elements (multiples of 64 but the last), as <see cref="For"/> does items.
    /// </summary>
    public static void ForRanges(int length, int threads, int minimum, Action<int, int> body)
    {
        int ranges = threads <= 1 ? 1 : Math.Clamp(length / Math.Max(1, minimum), 1, 4 * threads);
        if (ranges == 1) { body(0, length); return; }
        int size = ((length + ranges - 1) / ranges + 63) & ~63;
        For((length + size - 1) / size, threads, i => body(i * size, Math.Min(size, length - i * size)));
    }
}
