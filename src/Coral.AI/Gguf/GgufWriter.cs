using System.Text;

namespace Coral.AI;

/// <summary>A minimal GGUF v3 writer: key/value metadata, tensor infos, aligned tensor data.</summary>
internal sealed class GgufWriter
{
    public const uint TypeF32 = 0;
    public const uint TypeF16 = 1;
    public const uint TypeBF16 = 30;
    private const int Alignment = 32;

    private readonly List<(string Key, uint Type, Action<BinaryWriter> Write)> _kv = [];
    private readonly List<(string Name, long[] Shape, uint Type, byte[] Data)> _tensors = [];

    public void Add(string key, string value) => _kv.Add((key, 8, w => WriteString(w, value)));

    public void Add(string key, uint value) => _kv.Add((key, 4, w => w.Write(value)));

    public void Add(string key, int value) => _kv.Add((key, 5, w => w.Write(value)));

    public void Add(string key, float value) => _kv.Add((key, 6, w => w.Write(value)));

    public void Add(string key, bool value) => _kv.Add((key, 7, w => w.Write(value)));

    public void Add(string key, IReadOnlyList<string> values) => _kv.Add((key, 9, w =>
    {
        w.Write(8u);
        w.Write((ulong)values.Count);
        foreach (string v in values)
        {
            WriteString(w, v);
        }
    }));

    public void Add(string key, IReadOnlyList<float> values) => _kv.Add((key, 9, w =>
    {
        w.Write(6u);
        w.Write((ulong)values.Count);
        foreach (float v in values)
        {
            w.Write(v);
        }
    }));

    public void Add(string key, IReadOnlyList<int> values) => _kv.Add((key, 9, w =>
    {
        w.Write(5u);
        w.Write((ulong)values.Count);
        foreach (int v in values)
        {
            w.Write(v);
        }
    }));

    /// <summary>Adds a tensor; <paramref name="shape"/> is in PyTorch order (it is written reversed, as ggml expects).</summary>
    public void AddTensor(string name, long[] shape, uint type, byte[] data) => _tensors.Add((name, shape, type, data));

    public void Write(string path)
    {
        using var fs = File.Create(path);
        using var w = new BinaryWriter(fs, Encoding.UTF8);
        w.Write("GGUF"u8);
        w.Write(3u);
        w.Write((ulong)_tensors.Count);
        w.Write((ulong)(_kv.Count + 1));
        WriteString(w, "general.alignment");
        w.Write(4u);
        w.Write((uint)Alignment);
        foreach (var (key, type, write) in _kv)
        {
            WriteString(w, key);
            w.Write(type);
            write(w);
        }

        ulong offset = 0;
        foreach (var (name, shape, type, data) in _tensors)
        {
            WriteString(w, name);
            w.Write((uint)shape.Length);
            foreach (long d in shape.Reverse())
            {
                w.Write((ulong)d);
            }

            w.Write(type);
            w.Write(offset);
            offset += Pad((ulong)data.Length);
        }

        w.Flush();
        PadStream(fs);
        foreach (var (_, _, _, data) in _tensors)
        {
            fs.Write(data);
            PadStream(fs);
        }
    }

    private static ulong Pad(ulong n) => (n + Alignment - 1) / Alignment * Alignment;

    private static void PadStream(Stream s)
    {
        while (s.Position % Alignment != 0)
        {
            s.WriteByte(0);
        }
    }

    private static void WriteString(BinaryWriter w, string s)
    {
        byte[] b = Encoding.UTF8.GetBytes(s);
        w.Write((ulong)b.Length);
        w.Write(b);
    }
}
