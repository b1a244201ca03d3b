using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>Writes tensors as a <c>.safetensors</c> file (header padded with spaces to 8 bytes, data in order).</summary>
internal static class SafetensorsWriter
{
    public static void Write(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var list = tensors.ToList();
        using var ms = new MemoryStream();
        using (var w = new Utf8JsonWriter(ms))
        {
            w.WriteStartObject();
            if (metadata is not null)
            {
                w.WriteStartObject("__metadata__");
                foreach (var kv in metadata)
                {
                    w.WriteString(kv.Key, kv.Value);
                }

                w.WriteEndObject();
            }

            long offset = 0;
            foreach (var (name, t) in list)
            {
                long bytes = t.numel() * SafetensorsFile.ElementSize(t.dtype);
                w.WriteStartObject(name);
                w.WriteString("dtype", SafetensorsFile.DTypeName(t.dtype));
                w.WriteStartArray("shape");
                foreach (long d in t.shape)
                {
                    w.WriteNumberValue(d);
                }

                w.WriteEndArray();
                w.WriteStartArray("data_offsets");
                w.WriteNumberValue(offset);
                w.WriteNumberValue(offset + bytes);
                w.WriteEndArray();
                w.WriteEndObject();
                offset += bytes;
            }

            w.WriteEndObject();
        }

        byte[] header = ms.ToArray();
        int padded = (header.Length + 7) / 8 * 8;
        using var fs = File.Create(path);
        Span<byte> len = stackalloc byte[8];
        BinaryPrimitives.WriteInt64LittleEndian(len, padded);
        fs.Write(len);
        fs.Write(header);
        for (int i = header.Length; i < padded; i++)
        {
            fs.WriteByte((byte)' ');
        }

        foreach (var (_, t) in list)
        {
            using Tensor c = t.detach().cpu().contiguous();
            fs.Write(c.bytes);
        }
    }
}
