using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// The weights of a Hugging Face model folder: <c>model.safetensors</c> or a sharded
/// <c>model.safetensors.index.json</c>. Tensors are taken one at a time, checked against the expected shape and
/// converted to the compute dtype; a tensor already in that dtype stays a view of the memory-mapped file. A folder
/// imported from a GGUF file (<see cref="GgufImporter"/>) reads the file's tensors under their Hugging Face names instead,
/// as f32 values (quantized blocks dequantized, llama's q/k rows put back in Hugging Face order).
/// </summary>
internal sealed unsafe class CheckpointReader : IDisposable
{
    private readonly Dictionary<string, SafetensorsFile> _byTensor = new(StringComparer.Ordinal);
    private readonly List<SafetensorsFile> _files = [];
    private readonly Dictionary<string, (GgufTensorInfo Tensor, int PermuteHeads, float Add)> _gguf = new(StringComparer.Ordinal);
    private GgufFile? _ggufFile;

    public CheckpointReader(string folder, string baseName = "model")
    {
        Folder = folder;
        string single = System.IO.Path.Combine(folder, baseName + ".safetensors");
        string index = System.IO.Path.Combine(folder, baseName + ".safetensors.index.json");
        try
        {
            string ggufMap = System.IO.Path.Combine(folder, GgufImporter.MapFile);
            if (baseName == "model" && File.Exists(ggufMap))
            {
                JsonObject root = ModelConfig.ReadJsonObject(ggufMap);
                _ggufFile = GgufFile.Open(root["file"]!.GetValue<string>());
                foreach (var (name, entry) in (JsonObject)root["tensors"]!)
                {
                    string gguf = entry!["gguf"]!.GetValue<string>();
                    GgufTensorInfo t = _ggufFile.Tensors.TryGetValue(gguf, out GgufTensorInfo? found) ? found
                        : throw new CoralModelException(_ggufFile.Path, gguf, "is missing: the file changed since it was imported.");
                    if (entry["expert"]?.GetValue<int>() is int e and >= 0)
                    {
                        // One expert of a stacked [experts, rows, columns] tensor: its rows are contiguous.
                        long bytes = t.Bytes / t.Shape[0];
                        t = t with { Shape = t.Shape[1..], Offset = t.Offset + (e * bytes), Bytes = bytes };
                    }

                    _gguf[name] = (t, entry["permute_heads"]?.GetValue<int>() ?? 0, entry["add"]?.GetValue<float>() ?? 0);
                }
            }
            else if (File.Exists(index))
            {
                JsonObject root = ModelConfig.ReadJsonObject(index);
                if (root["weight_map"] is not JsonObject map)
                {
                    throw new CoralModelException(index, "weight_map", "missing or not an object.");
                }

                var opened = new Dictionary<string, SafetensorsFile>(StringComparer.Ordinal);
                foreach (var (name, fileNode) in map)
                {
                    string shard = fileNode?.GetValue<string>() ?? throw new CoralModelException(index, $"weight_map.{name}", "null shard name.");
                    if (shard.Contains('/') || shard.Contains('\\') || shard.Contains(".."))
                    {
                        throw new CoralModelException(index, $"weight_map.{name}", $"shard '{shard}' must be a file name in the model folder.");
                    }

                    if (!opened.TryGetValue(shard, out SafetensorsFile? f))
                    {
                        f = SafetensorsFile.Open(System.IO.Path.Combine(folder, shard));
                        opened[shard] = f;
                        _files.Add(f);
                    }

                    if (!f.Entries.ContainsKey(name))
                    {
                        throw new CoralModelException(f.Path, name, $"listed in {System.IO.Path.GetFileName(index)} but absent from the shard.");
                    }

                    _byTensor[name] = f;
                }
            }
            else if (File.Exists(single))
            {
                SafetensorsFile f = SafetensorsFile.Open(single);
                _files.Add(f);
                foreach (string name in f.Entries.Keys)
                {
                    _byTensor[name] = f;
                }
            }
            else
            {
                throw new CoralModelException(single, null, $"no {baseName}.safetensors or {baseName}.safetensors.index.json in the folder.");
            }
        }
        catch
        {
            Dispose();
            throw;
        }
    }

    public string Folder { get; }

    public IEnumerable<string> Names => _byTensor.Keys.Concat(_gguf.Keys);

    public bool Contains(string name) => _byTensor.ContainsKey(name) || _gguf.ContainsKey(name);

    /// <summary>Gets the prefix of the decoder's tensors (<c>embed_tokens</c>, <c>layers.N.</c>, <c>norm</c>): <c>model.</c>
    /// as a causal LM stores them; none for a base model saved without its head (as sentence-transformers saves
    /// Qwen3-Embedding); <c>language_model.model.</c> or <c>model.language_model.</c> in a multimodal checkpoint (Gemma-3
    /// 4B and up; the vision tower's tensors are not read). <c>model.</c> when none holds an embedding, so that errors
    /// name the usual tensor.</summary>
    public string DecoderRoot =>
        new[] { "model.", "", "language_model.model.", "model.language_model." }.FirstOrDefault(r => Contains(r + "embed_tokens.weight")) ?? "model.";

    /// <summary>Gets the name of an untied LM head: <c>lm_head.weight</c>, or <c>language_model.lm_head.weight</c> beside
    /// a multimodal checkpoint's <c>language_model.model.</c> decoder.</summary>
    public string HeadName => DecoderRoot == "language_model.model." ? "language_model.lm_head.weight" : "lm_head.weight";

    /// <summary>Gets a tensor's stored dtype. A GGUF tensor's: F16, BF16, or F32 for its dequantized values — but BF16 for
    /// a quantized vocabulary table (embedding, LM head), which the packed kernels then read in bf16 instead of f32.</summary>
    public ScalarType StoredType(string name) => _gguf.TryGetValue(name, out var g)
        ? g.Tensor.Type switch
        {
            GgmlType.F16 => ScalarType.Float16,
            GgmlType.BF16 => ScalarType.BFloat16,
            GgmlType.F32 => ScalarType.Float32,
            _ => g.Tensor.Name is "token_embd.weight" or "output.weight" ? ScalarType.BFloat16 : ScalarType.Float32,
        }
        : _byTensor[name].Entries[name].DType;

    /// <summary>Gets a tensor's stored shape.</summary>
    public long[] ShapeOf(string name) => _gguf.TryGetValue(name, out var g) ? g.Tensor.Shape : _byTensor[name].Entries[name].Shape;

    /// <summary>Returns the tensor converted to <paramref name="dtype"/>; a view of the mapping when no conversion is needed.</summary>
    public Tensor Take(string name, long[] expectedShape, ScalarType dtype)
    {
        if (_gguf.TryGetValue(name, out var g))
        {
            return TakeGguf(name, g.Tensor, g.PermuteHeads, g.Add, expectedShape, dtype);
        }

        if (!_byTensor.TryGetValue(name, out SafetensorsFile? f))
        {
            throw new CoralModelException(_files.Count == 1 ? _files[0].Path : Folder, name, "required tensor is missing from the checkpoint.");
        }

        SafetensorsEntry e = f.Entries[name];
        if (!e.Shape.SequenceEqual(expectedShape))
        {
            throw new CoralModelException(f.Path, name,
                $"shape [{string.Join(", ", e.Shape)}] does not match config.json, which implies [{string.Join(", ", expectedShape)}].");
        }

        if (e.DType is not (ScalarType.Float32 or ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new CoralModelException(f.Path, name, $"dtype {SafetensorsFile.DTypeName(e.DType)} is not a floating-point weight type (F32, BF16, F16).");
        }

        Tensor view = f.Get(name);
        if (view.dtype == dtype)
        {
            return view;
        }

        using (view)
        {
            return view.to(dtype);
        }
    }

    /// <summary>Returns the tensor converted to <paramref name="dtype"/> on <paramref name="device"/> as one handle: an
    /// intermediate handle left undisposed (TorchSharp's <c>to(device)</c> returns a new one even on the same device) would
    /// keep the converted storage alive until the garbage collector finalizes it.</summary>
    public Tensor Take(string name, long[] expectedShape, ScalarType dtype, Device device)
    {
        Tensor t = Take(name, expectedShape, dtype);
        if (t.device_type == device.type && (device.type == DeviceType.CPU || t.device_index == device.index))
        {
            return t;
        }

        using (t)
        {
            return t.to(device);
        }
    }

    /// <summary>A GGUF tensor's stored rows where they are Q4_K blocks — their address
    /// (valid while the reader is open), type, row count and q/k head permutation — for <see cref="PackedMatrix.TryFromBlocks"/>;
    /// null for any other tensor.</summary>
    public (nint Data, GgmlType Type, int Rows, int PermuteHeads)? Q4Blocks(string name) =>
        _gguf.TryGetValue(name, out var g) && g.Tensor.Type == GgmlType.Q4_K && g.Add == 0 && g.Tensor.Shape.Length == 2
            ? ((nint)_ggufFile!.Pointer(g.Tensor), g.Tensor.Type, (int)g.Tensor.Shape[0], g.PermuteHeads)
            : null;

    /// <summary>A GGUF tensor's values (f32, dequantized block by block), its q/k rows put back from llama.cpp's adjacent-pair
    /// RoPE order (within each head, stored row 2i + j is Hugging Face row j·hd/2 + i), <paramref name="add"/> added (a
    /// Gemma norm's −1: exact, both in [½, 2]), then converted.</summary>
    private Tensor TakeGguf(string name, GgufTensorInfo t, int permuteHeads, float add, long[] expectedShape, ScalarType dtype)
    {
        if (!t.Shape.SequenceEqual(expectedShape))
        {
            throw new CoralModelException(_ggufFile!.Path, t.Name,
                $"shape [{string.Join(", ", t.Shape)}] does not match the model's {name}, which the metadata implies is [{string.Join(", ", expectedShape)}].");
        }

        var (per, bytes) = GgmlBlocks.Block(t.Type);
        Tensor values = torch.empty(t.Shape, ScalarType.Float32);
        nint source = (nint)_ggufFile!.Pointer(t), destination = (nint)CpuKernels.Pointer(values);
        long blocks = t.Elements / per;
        int chunks = (int)Math.Clamp(blocks / 4096, 1, 64);
        Parallel.For(0, chunks, i =>
        {
            long first = blocks * i / chunks, end = blocks * (i + 1) / chunks;
            GgmlBlocks.Dequantize(t.Type, (byte*)source + (first * bytes), end - first, (float*)destination + (first * per));
        });
        if (permuteHeads > 0)
        {
            long rows = t.Shape[0], hd = rows / permuteHeads;
            long[] rest = [.. t.Shape.Skip(1)];
            using Tensor stored = values;
            values = stored.reshape([permuteHeads, hd / 2, 2, .. rest]).transpose(1, 2).reshape([rows, .. rest]).contiguous();
        }

        if (add != 0)
        {
            values.add_(add);
        }

        if (dtype == ScalarType.Float32)
        {
            return values;
        }

        using (values)
        {
            return values.to(dtype);
        }
    }

    public void Dispose()
    {
        _ggufFile?.Dispose();
        _ggufFile = null;
        foreach (SafetensorsFile f in _files)
        {
            f.Dispose();
        }

        _files.Clear();
    }
}
