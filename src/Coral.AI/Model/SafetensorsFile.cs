using System.Buffers.Binary;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>One tensor entry of a safetensors header.</summary>
internal sealed record SafetensorsEntry(string Name, ScalarType DType, long[] Shape, long Begin, long End);

/// <summary>
/// Reads a <c>.safetensors</c> file: validates the header completely, then memory-maps the data (libtorch
/// <c>from_file</c>, a private mapping) so that weights are paged in lazily and never read into managed memory.
/// </summary>
internal sealed class SafetensorsFile : IDisposable
{
    private const long MaxHeaderBytes = 100L * 1024 * 1024;
    private readonly Dictionary<ScalarType, Tensor> _maps = [];

    private SafetensorsFile(string path, long dataStart, long fileLength, Dictionary<string, SafetensorsEntry> entries)
    {
        Path = path;
        DataStart = dataStart;
        FileLength = fileLength;
        Entries = entries;
    }

    public string Path { get; }
    public long DataStart { get; }
    public long FileLength { get; }
    public IReadOnlyDictionary<string, SafetensorsEntry> Entries { get; }

    public static SafetensorsFile Open(string path)
    {
        if (!File.Exists(path))
        {
            throw new CoralModelException(path, null, "weight file not found.");
        }

        byte[] header;
        long headerLength, fileLength;
        using (var fs = File.OpenRead(path))
        {
            // The opened file's length: FileInfo.Length is a symbolic link's own size, and a Hugging Face cache snapshot
            // (snapshots/<revision>/model.safetensors → ../../blobs/<hash>) is made of links.
            fileLength = fs.Length;
            if (fileLength < 8)
            {
                throw new CoralModelException(path, null, $"truncated: {fileLength} bytes, shorter than the 8-byte header length.");
            }

            Span<byte> lenBytes = stackalloc byte[8];
            fs.ReadExactly(lenBytes);
            headerLength = BinaryPrimitives.ReadInt64LittleEndian(lenBytes);
            if (headerLength <= 0 || headerLength > MaxHeaderBytes || headerLength > fileLength - 8)
            {
                throw new CoralModelException(path, null,
                    $"corrupt header length {headerLength} (file has {fileLength} bytes); the file is truncated or not safetensors.");
            }

            header = new byte[headerLength];
            fs.ReadExactly(header);
        }

        long dataStart = 8 + headerLength;
        long dataLength = fileLength - dataStart;
        var entries = new Dictionary<string, SafetensorsEntry>(StringComparer.Ordinal);
        JsonDocument doc;
        try
        {
            doc = JsonDocument.Parse(header);
        }
        catch (JsonException ex)
        {
            throw new CoralModelException(path, null, $"header is not valid JSON: {ex.Message}", ex);
        }

        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object)
            {
                throw new CoralModelException(path, null, "header is not a JSON object.");
            }

            try
            {
                foreach (JsonProperty p in doc.RootElement.EnumerateObject())
                {
                    if (p.Name == "__metadata__")
                    {
                        continue;
                    }

                    entries[p.Name] = ParseEntry(path, p, dataLength);
                }
            }
            catch (InvalidOperationException ex)
            {
                // JsonDocument leaves strings undecoded until read: invalid UTF-8 in a name surfaces here.
                throw new CoralModelException(path, null, $"header is not valid UTF-8 JSON: {ex.Message}", ex);
            }
        }

        return new SafetensorsFile(path, dataStart, fileLength, entries);
    }

    /// <summary>
    /// Returns a tensor that views the mapped file (no copy) when the data is element-aligned, as standard writers lay it
    /// out; a tensor placed after an odd-sized one (e.g. after a U8 mask) is read into memory instead.
    /// </summary>
    public Tensor Get(string name)
    {
        SafetensorsEntry e = Entries[name];
        long es = ElementSize(e.DType);
        if ((DataStart + e.Begin) % es != 0)
        {
            Tensor copy = torch.empty(e.Shape, e.DType);
            using var fs = File.OpenRead(Path);
            fs.Position = DataStart + e.Begin;
            fs.ReadExactly(copy.bytes);
            return copy;
        }

        if (!_maps.TryGetValue(e.DType, out Tensor? map))
        {
            // The file owns its mappings (whatever dispose scope the first Get runs in).
            map = torch.from_file(Path, shared: false, size: FileLength / es, dtype: e.DType).DetachFromDisposeScope();
            _maps[e.DType] = map;
        }

        long count = (e.End - e.Begin) / es;
        using Tensor slice = map.narrow(0, (DataStart + e.Begin) / es, count);
        return slice.view(e.Shape);
    }

    public void Dispose()
    {
        foreach (Tensor t in _maps.Values)
        {
            t.Dispose();
        }

        _maps.Clear();
    }

    internal static long ElementSize(ScalarType t) => t switch
    {
        ScalarType.Float32 or ScalarType.Int32 => 4,
        ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Int16 => 2,
        ScalarType.Float64 or ScalarType.Int64 => 8,
        ScalarType.Int8 or ScalarType.Byte or ScalarType.Bool => 1,
        _ => throw new NotSupportedException(t.ToString()),
    };

    internal static string DTypeName(ScalarType t) => t switch
    {
        ScalarType.Float32 => "F32",
        ScalarType.Float16 => "F16",
        ScalarType.BFloat16 => "BF16",
        ScalarType.Float64 => "F64",
        ScalarType.Int64 => "I64",
        ScalarType.Int32 => "I32",
        ScalarType.Int16 => "I16",
        ScalarType.Int8 => "I8",
        ScalarType.Byte => "U8",
        ScalarType.Bool => "BOOL",
        _ => throw new NotSupportedException(t.ToString()),
    };

    private static SafetensorsEntry ParseEntry(string path, JsonProperty p, long dataLength)
    {
        JsonElement v = p.Value;
        if (v.ValueKind != JsonValueKind.Object
            || !v.TryGetProperty("dtype", out JsonElement dt) || dt.ValueKind != JsonValueKind.String
            || !v.TryGetProperty("shape", out JsonElement sh) || sh.ValueKind != JsonValueKind.Array
            || !v.TryGetProperty("data_offsets", out JsonElement off) || off.ValueKind != JsonValueKind.Array || off.GetArrayLength() != 2)
        {
            throw new CoralModelException(path, p.Name, "header entry needs dtype, shape and data_offsets [begin, end].");
        }

        ScalarType type = dt.GetString() switch
        {
            "F32" => ScalarType.Float32,
            "F16" => ScalarType.Float16,
            "BF16" => ScalarType.BFloat16,
            "F64" => ScalarType.Float64,
            "I64" => ScalarType.Int64,
            "I32" => ScalarType.Int32,
            "I16" => ScalarType.Int16,
            "I8" => ScalarType.Int8,
            "U8" => ScalarType.Byte,
            "BOOL" => ScalarType.Bool,
            string other => throw new CoralModelException(path, p.Name, $"dtype '{other}' is not supported."),
            null => throw new CoralModelException(path, p.Name, "dtype is null."),
        };

        long[] shape;
        long begin, end;
        try
        {
            shape = sh.EnumerateArray().Select(x => x.GetInt64()).ToArray();
            begin = off[0].GetInt64();
            end = off[1].GetInt64();
        }
        catch (FormatException ex)
        {
            throw new CoralModelException(path, p.Name, "shape and data_offsets must be non-negative integers.", ex);
        }
        catch (InvalidOperationException ex)
        {
            throw new CoralModelException(path, p.Name, "shape and data_offsets must be non-negative integers.", ex);
        }

        if (shape.Any(d => d < 0))
        {
            throw new CoralModelException(path, p.Name, $"negative dimension in shape [{string.Join(", ", shape)}].");
        }

        if (begin < 0 || end < begin || end > dataLength)
        {
            throw new CoralModelException(path, p.Name,
                $"data_offsets [{begin}, {end}] are out of range: the data section has {dataLength} bytes (file truncated or header corrupt).");
        }

        long es = ElementSize(type);
        long elements = shape.Aggregate(1L, (a, b) => checked(a * b));
        if ((end - begin) != checked(elements * es))
        {
            throw new CoralModelException(path, p.Name,
                $"data_offsets span {end - begin} bytes but shape [{string.Join(", ", shape)}] of {dt.GetString()} needs {elements * es}.");
        }

        return new SafetensorsEntry(p.Name, type, shape, begin, end);
    }
}
