using System.IO.MemoryMappedFiles;
using System.Text;

namespace Coral.AI;

/// <summary>
/// A GGUF file (llama.cpp's format, versions 2 and 3) opened for reading: its metadata (key → value: numbers, bools,
/// strings, arrays), its tensor table, and the tensor data, memory-mapped. Reading checks every length against the file,
/// so a truncated or corrupt file fails with a <see cref="CoralModelException"/> naming what is wrong.
/// </summary>
internal sealed unsafe class GgufFile : IDisposable
{
    private const uint Magic = 0x46554747;   // "GGUF"
    private readonly MemoryMappedFile _map;
    private readonly MemoryMappedViewAccessor _view;
    private readonly byte* _base;

    private GgufFile(string path, MemoryMappedFile map, MemoryMappedViewAccessor view, byte* data, long length)
    {
        (Path, _map, _view, Length) = (path, map, view, length);
        _base = data;
    }

    public string Path { get; }

    public long Length { get; }

    public int Version { get; private set; }

    public Dictionary<string, object> Metadata { get; } = new(StringComparer.Ordinal);

    public Dictionary<string, GgufTensorInfo> Tensors { get; } = new(StringComparer.Ordinal);

    /// <summary>Opens and parses <paramref name="path"/>.</summary>
    public static GgufFile Open(string path)
    {
        if (!File.Exists(path))
        {
            throw new CoralModelException(path, null, "does not exist (an imported GGUF file moved or deleted since its import?).");
        }

        long length = new FileInfo(path).Length;
        if (length < 24)
        {
            throw new CoralModelException(path, null, $"is {length} bytes: too short for a GGUF header.");
        }

        MemoryMappedFile map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* data = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref data);
            var file = new GgufFile(path, map, view, data + view.PointerOffset, length);
            try
            {
                file.Parse();
                return file;
            }
            catch
            {
                file.Dispose();
                throw;
            }
        }
        catch
        {
            if (view is null)
            {
                map.Dispose();
            }

            throw;
        }
    }

    /// <summary>Gets the address of a tensor's data (valid while the file is open).</summary>
    public byte* Pointer(GgufTensorInfo tensor) => _base + tensor.Offset;

    /// <summary>Gets a string value, or null when absent.</summary>
    public string? GetString(string key) => Metadata.GetValueOrDefault(key) switch
    {
        null => null,
        string s => s,
        var other => throw new CoralModelException(Path, key, $"is a {other.GetType().Name}, not a string."),
    };

    /// <summary>Gets an integer value (any integer type), or null when absent.</summary>
    public long? GetInteger(string key) => Metadata.GetValueOrDefault(key) switch
    {
        null => null,
        byte or sbyte or ushort or short or uint or int or ulong or long => Convert.ToInt64(Metadata[key], System.Globalization.CultureInfo.InvariantCulture),
        var other => throw new CoralModelException(Path, key, $"is a {other.GetType().Name}, not an integer."),
    };

    /// <summary>Gets a number (integer or floating point), or null when absent.</summary>
    public double? GetNumber(string key) => Metadata.GetValueOrDefault(key) switch
    {
        null => null,
        float f => f,
        double d => d,
        _ => GetInteger(key),
    };

    /// <summary>Gets a bool value, or null when absent.</summary>
    public bool? GetBool(string key) => Metadata.GetValueOrDefault(key) switch
    {
        null => null,
        bool b => b,
        var other => throw new CoralModelException(Path, key, $"is a {other.GetType().Name}, not a bool."),
    };

    /// <summary>Gets an array value, or null when absent.</summary>
    public T[]? GetArray<T>(string key) => Metadata.GetValueOrDefault(key) switch
    {
        null => null,
        T[] a => a,
        var other => throw new CoralModelException(Path, key, $"is a {other.GetType().Name}, not an array of {typeof(T).Name}."),
    };

    private void Parse()
    {
        long at = 0;
        if (U32(ref at) != Magic)
        {
            throw new CoralModelException(Path, null, "is not a GGUF file (no GGUF magic).");
        }

        Version = (int)U32(ref at);
        if (Version is not (2 or 3))
        {
            throw new CoralModelException(Path, "version", $"GGUF version {Version} is not supported (2 and 3 are).");
        }

        long tensorCount = checked((long)U64(ref at)), kvCount = checked((long)U64(ref at));
        if (tensorCount > Length / 24 || kvCount > Length / 12)
        {
            throw new CoralModelException(Path, null, $"claims {tensorCount} tensors and {kvCount} metadata entries: more than its {Length} bytes can hold (truncated or corrupt).");
        }

        for (long i = 0; i < kvCount; i++)
        {
            string key = Str(ref at);
            uint type = U32(ref at);
            Metadata[key] = Value(type, ref at, key);
        }

        var infos = new List<(string Name, long[] Dims, GgmlType Type, ulong Offset)>();
        for (long i = 0; i < tensorCount; i++)
        {
            string name = Str(ref at);
            uint dims = U32(ref at);
            if (dims is 0 or > 4)
            {
                throw new CoralModelException(Path, name, $"has {dims} dimensions (1 to 4 expected).");
            }

            var shape = new long[dims];
            for (int d = 0; d < dims; d++)
            {
                shape[d] = checked((long)U64(ref at));
            }

            infos.Add((name, shape, (GgmlType)U32(ref at), U64(ref at)));
        }

        long alignment = GetInteger("general.alignment") ?? 32;
        if (alignment <= 0 || (alignment & (alignment - 1)) != 0)
        {
            throw new CoralModelException(Path, "general.alignment", $"{alignment} is not a power of two.");
        }

        long dataStart = (at + alignment - 1) / alignment * alignment;
        foreach (var (name, dims, type, offset) in infos)
        {
            long elements = dims.Aggregate(1L, (a, b) => checked(a * b));
            long bytes = GgmlBlocks.Bytes(type, elements, Path, name);
            long start = checked(dataStart + (long)offset);
            if (start + bytes > Length)
            {
                throw new CoralModelException(Path, name, $"data at {start} + {bytes} bytes runs past the end of the file ({Length} bytes): truncated?");
            }

            // GGUF lists dimensions fastest first; the HF shape is the reverse ([rows, columns]).
            Tensors[name] = new GgufTensorInfo(name, [.. dims.Reverse()], type, start, bytes);
        }
    }

    private object Value(uint type, ref long at, string key) => type switch
    {
        0 => Byte(ref at),
        1 => (sbyte)Byte(ref at),
        2 => (ushort)(Byte(ref at) | (Byte(ref at) << 8)),
        3 => (short)(Byte(ref at) | (Byte(ref at) << 8)),
        4 => U32(ref at),
        5 => (int)U32(ref at),
        6 => BitConverter.Int32BitsToSingle((int)U32(ref at)),
        7 => Byte(ref at) != 0,
        8 => Str(ref at),
        9 => Array(ref at, key),
        10 => U64(ref at),
        11 => (long)U64(ref at),
        12 => BitConverter.Int64BitsToDouble((long)U64(ref at)),
        _ => throw new CoralModelException(Path, key, $"has metadata type {type}, which GGUF does not define."),
    };

    private object Array(ref long at, string key)
    {
        uint type = U32(ref at);
        long count = checked((long)U64(ref at));
        if (count > Length - at)
        {
            throw new CoralModelException(Path, key, $"claims {count} array elements: more than the file holds (truncated or corrupt).");
        }

        switch (type)
        {
            case 8:
            {
                var strings = new string[count];
                for (long i = 0; i < count; i++)
                {
                    strings[i] = Str(ref at);
                }

                return strings;
            }

            case 4 or 5:
            {
                var ints = new int[count];
                for (long i = 0; i < count; i++)
                {
                    ints[i] = (int)U32(ref at);
                }

                return ints;
            }

            case 6:
            {
                var floats = new float[count];
                for (long i = 0; i < count; i++)
                {
                    floats[i] = BitConverter.Int32BitsToSingle((int)U32(ref at));
                }

                return floats;
            }

            default:
            {
                var values = new object[count];
                for (long i = 0; i < count; i++)
                {
                    values[i] = Value(type, ref at, key);
                }

                return values;
            }
        }
    }

    private void Need(long at, long bytes)
    {
        if (bytes < 0 || at + bytes > Length)
        {
            throw new CoralModelException(Path, null, $"ends inside its header (at byte {at}, {bytes} more needed): truncated or corrupt.");
        }
    }

    private byte Byte(ref long at)
    {
        Need(at, 1);
        return _base[at++];
    }

    private uint U32(ref long at)
    {
        Need(at, 4);
        uint v = *(uint*)(_base + at);
        at += 4;
        return v;
    }

    private ulong U64(ref long at)
    {
        Need(at, 8);
        ulong v = *(ulong*)(_base + at);
        at += 8;
        return v;
    }

    private string Str(ref long at)
    {
        ulong n = U64(ref at);
        if (n > int.MaxValue)
        {
            throw new CoralModelException(Path, null, $"has a string of {n} bytes at byte {at - 8}: corrupt.");
        }

        Need(at, (long)n);
        string s = Encoding.UTF8.GetString(_base + at, (int)n);
        at += (long)n;
        return s;
    }

    public void Dispose()
    {
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
