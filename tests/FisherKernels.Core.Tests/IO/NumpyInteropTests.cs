using System.Diagnostics;
using System.Text.Json;
using FisherKernels.IO;
using Xunit.Abstractions;

namespace FisherKernels.Tests.IO;

/// <summary>
/// Files we write are read correctly by numpy (npy) and by a plain-Python safetensors parser, and
/// files numpy writes (npy versions 1.0, 2.0, 3.0) are read correctly by us. Needs /usr/bin/python3
/// with numpy; without it the test says so and passes.
/// </summary>
public class NumpyInteropTests(ITestOutputHelper output)
{
    const string Python = "/usr/bin/python3";

    const string Script = """
import json, struct, sys
import numpy as np

def load_safetensors(path):
    b = open(path, 'rb').read()
    n = struct.unpack('<Q', b[:8])[0]
    assert n % 8 == 0, 'header not padded to 8'
    header = json.loads(b[8:8 + n])
    meta = header.pop('__metadata__', {})
    types = {'F32': '<f4', 'F64': '<f8', 'F16': '<f2', 'I32': '<i4', 'I64': '<i8', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}
    out = {}
    for name, t in header.items():
        s, e = t['data_offsets']
        out[name] = np.frombuffer(b[8 + n + s:8 + n + e], dtype=types[t['dtype']]).reshape(t['shape'])
    return out, meta

def describe(a):
    return {'dtype': a.dtype.name, 'shape': list(a.shape), 'values': a.ravel().tolist()}

folder = sys.argv[1]
result = {'npy': {}}
for name in sys.argv[2:]:
    result['npy'][name] = describe(np.load(folder + '/' + name + '.npy'))
tensors, meta = load_safetensors(folder + '/t.safetensors')
result['safetensors'] = {k: describe(v) for k, v in tensors.items()}
result['metadata'] = meta
json.dump(result, open(folder + '/result.json', 'w'))

# Files numpy writes, for the other direction.
from numpy.lib import format as fmt
base = np.arange(24, dtype=np.float64).reshape(2, 3, 4) * 0.75 - 5
for version in [(1, 0), (2, 0), (3, 0)]:
    for dtype in ['<f4', '<f8', '<f2', '<i4', '<i8', '|u1', '|i1', '|b1']:
        with open(folder + '/np_%d_%s.npy' % (version[0], dtype[1:]), 'wb') as f:
            fmt.write_array(f, base.astype(dtype), version=version)
np.save(folder + '/np_scalar.npy', np.float32(2.5))
np.save(folder + '/np_empty.npy', np.zeros((3, 0, 2), dtype=np.int64))
np.save(folder + '/np_fortran.npy', np.asfortranarray(base))
""";

    static bool HasNumpy()
    {
        if (!File.Exists(Python)) return false;
        var (code, _) = Run("-c \"import numpy\"");
        return code == 0;
    }

    static (int Code, string Output) Run(string arguments)
    {
        var info = new ProcessStartInfo(Python, arguments) { RedirectStandardError = true, RedirectStandardOutput = true };
        using var p = Process.Start(info)!;
        string text = p.StandardOutput.ReadToEnd() + p.StandardError.ReadToEnd();
        if (!p.WaitForExit(60_000)) { p.Kill(); return (-1, "timed out"); }
        return (p.ExitCode, text);
    }

    [Fact]
    public void NumpyReadsOurFilesAndWeReadNumpys()
    {
        if (!HasNumpy())
        {
            output.WriteLine($"SKIPPED: {Python} with numpy is not available");
            return;
        }
        string dir = TestArrays.TempFolder();
        try
        {
            var rng = new Random(5);
            var arrays = new Dictionary<string, NdArray>();
            foreach (ElementType type in TestArrays.StorableTypes)
            {
                arrays[$"{type}_2d"] = Finite(TestArrays.Random(rng, type, [3, 4]));
                arrays[$"{type}_0d"] = Finite(TestArrays.Random(rng, type, []));
                arrays[$"{type}_empty"] = TestArrays.Random(rng, type, [2, 0, 3]);
            }
            foreach (var (name, array) in arrays) NpyFile.Write(Path.Combine(dir, name + ".npy"), array);
            var metadata = new Dictionary<string, string> { ["format"] = "fisherkernels/1", ["note"] = "ünïcode" };
            SafetensorsFile.Write(Path.Combine(dir, "t.safetensors"), arrays, metadata);

            File.WriteAllText(Path.Combine(dir, "check.py"), Script);
            var (code, text) = Run($"{Path.Combine(dir, "check.py")} {dir} {string.Join(' ', arrays.Keys)}");
            Assert.True(code == 0, text);

            using var result = JsonDocument.Parse(File.ReadAllBytes(Path.Combine(dir, "result.json")));
            foreach (var (name, array) in arrays)
            {
                AssertSame(array, result.RootElement.GetProperty("npy").GetProperty(name), $"npy {name}");
                AssertSame(array, result.RootElement.GetProperty("safetensors").GetProperty(name), $"safetensors {name}");
            }
            Assert.Equal("ünïcode", result.RootElement.GetProperty("metadata").GetProperty("note").GetString());

            double[] expected = Enumerable.Range(0, 24).Select(i => i * 0.75 - 5).ToArray();
            foreach (int version in new[] { 1, 2, 3 })
                foreach (string t in new[] { "f4", "f8", "f2", "i4", "i8", "u1", "i1", "b1" })
                {
                    NdArray read = NpyFile.Read(Path.Combine(dir, $"np_{version}_{t}.npy"));
                    Assert.Equal([2, 3, 4], read.Shape);
                    double[] values = AsDoubles(read);
                    for (int i = 0; i < 24; i++)
                        Assert.Equal(NumpyCast(expected[i], t), values[i]);
                }
            var scalar = NpyFile.ReadFloat32(Path.Combine(dir, "np_scalar.npy"));
            Assert.Equal(0, scalar.Rank);
            Assert.Equal(2.5f, scalar.Data[0]);
            Assert.Equal([3, 0, 2], NpyFile.ReadInt64(Path.Combine(dir, "np_empty.npy")).Shape);
            var e = Assert.Throws<FisherKernelsException>(() => NpyFile.Read(Path.Combine(dir, "np_fortran.npy")));
            Assert.Equal(ErrorKind.Unsupported, e.Kind);
        }
        finally { Directory.Delete(dir, true); }
    }

    /// <summary>Python's json cannot carry NaN/Inf portably; replace non-finite floats.</summary>
    static NdArray Finite(NdArray a)
    {
        switch (a)
        {
            case NdArray<float> f: for (int i = 0; i < f.Data.Length; i++) if (!float.IsFinite(f.Data[i])) f.Data[i] = i; break;
            case NdArray<double> d: for (int i = 0; i < d.Data.Length; i++) if (!double.IsFinite(d.Data[i])) d.Data[i] = i; break;
            case NdArray<Half> h: for (int i = 0; i < h.Data.Length; i++) if (!Half.IsFinite(h.Data[i])) h.Data[i] = (Half)i; break;
        }
        return a;
    }

    static double NumpyCast(double v, string type) => type switch
    {
        "f4" => (float)v,
        "f2" => (double)(Half)v,
        "i4" or "i8" => Math.Truncate(v),
        "i1" => (sbyte)Math.Truncate(v),
        "u1" => (byte)(sbyte)Math.Truncate(v),
        "b1" => v != 0 ? 1 : 0,
        _ => v,
    };

    static double[] AsDoubles(NdArray a) => a switch
    {
        NdArray<float> f => f.Data.Select(x => (double)x).ToArray(),
        NdArray<double> d => d.Data,
        NdArray<Half> h => h.Data.Select(x => (double)x).ToArray(),
        NdArray<int> i => i.Data.Select(x => (double)x).ToArray(),
        NdArray<long> l => l.Data.Select(x => (double)x).ToArray(),
        NdArray<sbyte> s => s.Data.Select(x => (double)x).ToArray(),
        NdArray<byte> b => b.Data.Select(x => (double)x).ToArray(),
        NdArray<bool> b => b.Data.Select(x => x ? 1.0 : 0.0).ToArray(),
        _ => throw new InvalidOperationException(),
    };

    static void AssertSame(NdArray expected, JsonElement actual, string what)
    {
        string dtype = expected.ElementType switch
        {
            ElementType.Float32 => "float32", ElementType.Float64 => "float64", ElementType.Float16 => "float16",
            ElementType.Int32 => "int32", ElementType.Int64 => "int64", ElementType.Int8 => "int8",
            ElementType.UInt8 => "uint8", _ => "bool",
        };
        Assert.Equal(dtype, actual.GetProperty("dtype").GetString());
        Assert.Equal(expected.Shape, actual.GetProperty("shape").EnumerateArray().Select(e => e.GetInt32()).ToArray());
        var values = actual.GetProperty("values").EnumerateArray().ToArray();
        Assert.Equal(expected.Length, values.Length);
        for (int i = 0; i < values.Length; i++)
        {
            bool same = expected switch
            {
                NdArray<long> l => values[i].GetInt64() == l.Data[i],
                NdArray<bool> b => values[i].GetBoolean() == b.Data[i],
                _ => values[i].GetDouble() == AsDoubles(expected)[i],
            };
            Assert.True(same, $"{what}[{i}]: numpy read {values[i].GetRawText()}");
        }
    }
}
