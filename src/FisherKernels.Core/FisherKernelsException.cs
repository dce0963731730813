namespace FisherKernels;

/// <summary>What went wrong, in the C ABI's terms (SPEC §8): values match <c>fk_status</c>.</summary>
public enum ErrorKind
{
    InvalidArgument = 1,
    Io = 2,
    Format = 3,
    Unsupported = 4,
    BufferTooSmall = 5,
    Backend = 6,
    OutOfMemory = 7,
    Internal = 99,
}

/// <summary>
/// An error a user can act on: the message names the file, node, input or option at fault.
/// The CLI prints <see cref="Exception.Message"/> as one line; the C ABI maps <see cref="Kind"/> to a status.
/// </summary>
public sealed class FisherKernelsException : Exception
{
    public ErrorKind Kind { get; }

    public FisherKernelsException(ErrorKind kind, string message, Exception? inner = null)
        : base(message, inner) => Kind = kind;

    public static FisherKernelsException Format(string message) => new(ErrorKind.Format, message);
    public static FisherKernelsException Argument(string message) => new(ErrorKind.InvalidArgument, message);
    public static FisherKernelsException Unsupported(string message) => new(ErrorKind.Unsupported, message);
    public static FisherKernelsException Io(string message, Exception? inner = null) => new(ErrorKind.Io, message, inner);
    public static FisherKernelsException Backend(string message, Exception? inner = null) => new(ErrorKind.Backend, message, inner);
}
