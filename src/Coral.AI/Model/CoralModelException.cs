namespace Coral.AI;

/// <summary>
/// A model folder, weight file or configuration that cannot be used: corrupt or truncated safetensors, a missing tensor, a
/// shape that disagrees with config.json, an unsupported architecture or dtype.
/// </summary>
/// <remarks>The message always names the file and, where there is one, the field or tensor at fault.</remarks>
public sealed class CoralModelException : Exception
{
    /// <summary>Initializes a new instance of the <see cref="CoralModelException"/> class.</summary>
    /// <param name="filePath">The file at fault.</param>
    /// <param name="field">The JSON field or tensor name at fault, if any.</param>
    /// <param name="message">What is wrong.</param>
    /// <param name="innerException">The underlying error, if any.</param>
    public CoralModelException(string filePath, string? field, string message, Exception? innerException = null)
        : base(Format(filePath, field, message), innerException)
    {
        FilePath = filePath;
        Field = field;
    }

    /// <summary>Gets the file at fault.</summary>
    public string FilePath { get; }

    /// <summary>Gets the JSON field or tensor name at fault, or <see langword="null"/>.</summary>
    public string? Field { get; }

    private static string Format(string filePath, string? field, string message) =>
        field is null ? $"{filePath}: {message}" : $"{filePath}: '{field}': {message}";
}
