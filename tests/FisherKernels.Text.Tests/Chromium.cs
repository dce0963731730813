using System.Diagnostics;
using System.IO.Compression;

namespace FisherKernels.Tests;

/// <summary>Debian's chromium, headless: the browser the HTML page is tested in (build.cake installs it; tests skip without it).</summary>
internal static class Chromium
{
    public static readonly string? Path = new[] { "/usr/bin/chromium", "/usr/bin/chromium-browser" }.FirstOrDefault(File.Exists);

    static string Run(params string[] args)
    {
        var start = new ProcessStartInfo(Path!) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in new[] { "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                                     $"--user-data-dir={System.IO.Path.Combine(System.IO.Path.GetTempPath(), "fk-chromium-" + Guid.NewGuid().ToString("N"))}" }.Concat(args))
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (!process.WaitForExit(120_000))
        {
            process.Kill(entireProcessTree: true);
            throw new TimeoutException("chromium did not finish in 120 s");
        }
        if (process.ExitCode != 0) throw new InvalidOperationException($"chromium exited with {process.ExitCode}: {stderr.Result}");
        return stdout.Result;
    }

    /// <summary>The DOM after the page's scripts ran.</summary>
    public static string DumpDom(string url) => Run("--dump-dom", url);

    public static void Screenshot(string url, string png, int width, int height) =>
        Run($"--screenshot={png}", $"--window-size={width},{height}", "--virtual-time-budget=2000", url);

    /// <summary>The RGB pixels of an 8-bit, non-interlaced RGB or RGBA PNG (what chromium writes).</summary>
    public static (int Width, int Height, byte[] Rgb) ReadPng(string path)
    {
        byte[] file = File.ReadAllBytes(path);
        int at = 8, width = 0, height = 0, channels = 0;
        using var idat = new MemoryStream();
        while (at < file.Length)
        {
            int length = (file[at] << 24) | (file[at + 1] << 16) | (file[at + 2] << 8) | file[at + 3];
            string type = System.Text.Encoding.ASCII.GetString(file, at + 4, 4);
            var body = file.AsSpan(at + 8, length);
            if (type == "IHDR")
            {
                width = (body[0] << 24) | (body[1] << 16) | (body[2] << 8) | body[3];
                height = (body[4] << 24) | (body[5] << 16) | (body[6] << 8) | body[7];
                Assert.Equal(8, body[8]);
                channels = body[9] switch { 2 => 3, 6 => 4, _ => throw new NotSupportedException($"PNG colour type {body[9]}") };
                Assert.Equal(0, body[12]);
            }
            else if (type == "IDAT") idat.Write(body);
            at += 12 + length;
        }
        idat.Position = 0;
        using var z = new ZLibStream(idat, CompressionMode.Decompress);
        int stride = width * channels;
        var raw = new byte[(stride + 1) * height];
        z.ReadExactly(raw);
        var pixels = new byte[stride * height];
        for (int y = 0; y < height; y++)
        {
            int filter = raw[y * (stride + 1)];
            for (int x = 0; x < stride; x++)
            {
                int a = x >= channels ? pixels[y * stride + x - channels] : 0;
                int b = y > 0 ? pixels[(y - 1) * stride + x] : 0;
                int c = x >= channels && y > 0 ? pixels[(y - 1) * stride + x - channels] : 0;
                int v = raw[y * (stride + 1) + 1 + x];
                int p = a + b - c, pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
                pixels[y * stride + x] = (byte)(filter switch
                {
                    0 => v,
                    1 => v + a,
                    2 => v + b,
                    3 => v + ((a + b) >> 1),
                    4 => v + (pa <= pb && pa <= pc ? a : pb <= pc ? b : c),
                    _ => throw new NotSupportedException($"PNG filter {filter}"),
                });
            }
        }
        var rgb = new byte[width * height * 3];
        for (int i = 0; i < width * height; i++)
            for (int ch = 0; ch < 3; ch++) rgb[i * 3 + ch] = pixels[i * channels + ch];
        return (width, height, rgb);
    }
}

/// <summary>A test that needs chromium: skipped where it is not installed (build.cake's Deps installs it, so CI runs it).</summary>
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        if (Chromium.Path is null) Skip = "chromium is not installed (apt-get install chromium)";
    }
}
