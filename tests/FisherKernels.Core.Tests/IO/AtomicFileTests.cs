using FisherKernels.IO;

namespace FisherKernels.Tests.IO;

public class AtomicFileTests
{
    [Fact]
    public void WritesAndReplacesLeavingNoTemporaryFiles()
    {
        string dir = TestArrays.TempFolder();
        try
        {
            string path = Path.Combine(dir, "out.bin");
            AtomicFile.WriteAllBytes(path, [1, 2, 3]);
            AtomicFile.WriteAllBytes(path, [4, 5]);
            Assert.Equal([4, 5], File.ReadAllBytes(path));
            Assert.Equal([path], Directory.GetFiles(dir));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void FailureLeavesOldFileAndNoTemporaryFile()
    {
        string dir = TestArrays.TempFolder();
        try
        {
            string path = Path.Combine(dir, "out.npy");
            AtomicFile.WriteAllBytes(path, [9]);
            var boom = Assert.Throws<InvalidOperationException>(() => AtomicFile.Write(path, s =>
            {
                s.Write(new byte[100_000]);
                throw new InvalidOperationException("interrupted");
            }));
            Assert.Equal("interrupted", boom.Message);
            Assert.Equal([9], File.ReadAllBytes(path));
            Assert.Equal([path], Directory.GetFiles(dir));

            // A writer that fails half way (a tensor type npy cannot hold is found before writing) leaves nothing.
            string fresh = Path.Combine(dir, "fresh.safetensors");
            Assert.Throws<FisherKernelsException>(() => SafetensorsFile.Write(fresh, [new("a", new NdArray<float>(2)), new("a", new NdArray<float>(2))]));
            Assert.False(File.Exists(fresh));
            Assert.Equal([path], Directory.GetFiles(dir));
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void MissingOrUnwritableDestinationIsAnIoErrorNamingThePath()
    {
        string dir = TestArrays.TempFolder();
        try
        {
            string missing = Path.Combine(dir, "no", "such", "x.npy");
            var e = Assert.Throws<FisherKernelsException>(() => NpyFile.Write(missing, new NdArray<float>(1)));
            Assert.Equal(ErrorKind.Io, e.Kind);
            Assert.Contains(missing, e.Message);
            Assert.Contains("does not exist", e.Message);

            e = Assert.Throws<FisherKernelsException>(() => NpyFile.Write(dir, new NdArray<float>(1)));
            Assert.Equal(ErrorKind.Io, e.Kind);
            Assert.Contains("folder", e.Message);

            if (OperatingSystem.IsLinux())
            {
                // Not even root can create files in /proc.
                string target = "/proc/fisherkernels-test.npy";
                e = Assert.Throws<FisherKernelsException>(() => NpyFile.Write(target, new NdArray<float>(1)));
                Assert.Equal(ErrorKind.Io, e.Kind);
                Assert.Contains(target, e.Message);
            }
            if (!OperatingSystem.IsWindows() && Environment.UserName != "root")
            {
                string locked = Path.Combine(dir, "locked");
                Directory.CreateDirectory(locked);
                File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserExecute);
                string target = Path.Combine(locked, "x.npy");
                e = Assert.Throws<FisherKernelsException>(() => NpyFile.Write(target, new NdArray<float>(1)));
                Assert.Equal(ErrorKind.Io, e.Kind);
                Assert.Contains(target, e.Message);
                File.SetUnixFileMode(locked, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
            }
        }
        finally { Directory.Delete(dir, true); }
    }
}
