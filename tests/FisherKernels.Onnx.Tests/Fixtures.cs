namespace FisherKernels.Tests;

/// <summary>Paths of the committed fixture models and goldens (tests/fixtures, see its README).</summary>
internal static class Fixtures
{
    public static readonly string Folder = FindFolder();

    public static string Path(string file) => System.IO.Path.Combine(Folder, file);

    /// <summary>A file of this test project's source folder (case tables written by the scripts beside them).</summary>
    public static string ProjectFile(params string[] parts) =>
        System.IO.Path.Combine([System.IO.Path.GetDirectoryName(Folder)!, "FisherKernels.Onnx.Tests", .. parts]);

    /// <summary>Every array of an .npz file by its name (without ".npy").</summary>
    public static Dictionary<string, NdArray> ReadNpz(string path)
    {
        using var zip = System.IO.Compression.ZipFile.OpenRead(path);
        var result = new Dictionary<string, NdArray>();
        foreach (var entry in zip.Entries)
        {
            using var stream = entry.Open();
            var memory = new MemoryStream();
            stream.CopyTo(memory);
            memory.Position = 0;
            result[entry.FullName[..^".npy".Length]] = FisherKernels.IO.NpyFile.Read(memory, entry.FullName);
        }
        return result;
    }

    /// <summary>The engine's view of a file array: float64 would be float32 after import.</summary>
    public static NdArray Engine(NdArray a) => a is NdArray<double> d
        ? new NdArray<float>(d.Shape, Array.ConvertAll(d.Data, v => (float)v)) : a;

    /// <summary>Any numeric or boolean array's values as float64 (bool as 0/1), for comparing against references.</summary>
    public static double[] Doubles(NdArray value) => value switch
    {
        NdArray<float> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<double> a => a.Data,
        NdArray<Half> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<long> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<int> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<sbyte> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<byte> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<short> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<ushort> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<uint> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<ulong> a => Array.ConvertAll(a.Data, v => (double)v),
        NdArray<bool> a => Array.ConvertAll(a.Data, v => v ? 1.0 : 0.0),
        _ => throw new InvalidOperationException(value.ElementType.ToString()),
    };

    private static string FindFolder()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = System.IO.Path.Combine(dir.FullName, "tests", "fixtures");
            if (File.Exists(System.IO.Path.Combine(candidate, "gpt2_tiny.onnx"))) return candidate;
        }
        throw new InvalidOperationException("tests/fixtures not found above " + AppContext.BaseDirectory);
    }
}

/// <summary>A temporary folder deleted when the test ends.</summary>
internal sealed class TempFolder : IDisposable
{
    public string Path { get; } = Directory.CreateTempSubdirectory("fk-onnx-").FullName;

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try { Directory.Delete(Path, recursive: true); } catch (IOException) { }
    }
}
