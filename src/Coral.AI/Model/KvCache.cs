using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// The key/value cache of one sequence, allocated once: per layer V of shape [1, kvHeads, capacity, headDim] (the batch
/// dimension attention takes, so that reading the first n slots is one narrow) and K of the same shape, or transposed
/// [1, kvHeads, headDim, <see cref="KeyStride"/>] for <see cref="CpuKernels"/> (scores then come 16 keys to a vector).
/// Slots are written in place; rolling back means lowering <see cref="Length"/>, never reallocating. On CPU the libtorch
/// path of an engine with a drafter keeps it in f64 (see <see cref="DecoderLayer.Attention"/>: tree verification then
/// equals one-token steps bit for bit); otherwise it is f32, or on the CPU kernels bf16 when asked.
/// </summary>
internal sealed unsafe class KvCache : IDisposable
{
    /// <summary>Allocates the cache.</summary>
    /// <param name="config">The model's shape.</param>
    /// <param name="capacity">Slots.</param>
    /// <param name="dtype">f32; f64 for the libtorch path's batch-invariant attention on CPU; or bf16 for the CPU kernels'
    /// transposed layout.</param>
    /// <param name="device">Where it lives.</param>
    /// <param name="batchInvariant">Whether the engine verifies draft trees, so a token must compute the same bits alone
    /// as in a tree (f32 GEMM rows are then padded to whole blocks; see <see cref="TransformerModel.Forward"/>).</param>
    /// <param name="keysTransposed">Whether keys are stored [1, kvHeads, headDim, KeyStride] (the CPU kernels' layout).</param>
    public KvCache(ModelConfig config, int capacity, ScalarType dtype, Device device, bool batchInvariant = false, bool keysTransposed = false)
    {
        Capacity = capacity;
        BatchInvariant = batchInvariant;
        KeysTransposed = keysTransposed;
        KeyStride = keysTransposed ? (capacity + 15) / 16 * 16 : config.HeadDim;   // whole 16-key blocks can be read
        Keys = new Tensor[config.NumLayers];
        Values = new Tensor[config.NumLayers];
        // Allocated once for the whole context but not written: on CPU the pages become resident as slots fill (an 8B
        // model's 4,096-slot f32 cache is 1 GB, most of it never touched by a short chat). No slot is read before it is
        // written — attention reads slots below the length; the kernels' score loop reads the rest of the last 16-key
        // block too (into scores never used), which the key opening each block clears (CpuKernels.RopeAndCache).
        Func<long[], ScalarType, Device, Tensor> allocate = device.type == DeviceType.CPU
            ? (shape, t, d) => torch.empty(shape, t, d)
            : (shape, t, d) => torch.zeros(shape, t, d);
        for (int l = 0; l < config.NumLayers; l++)
        {
            Keys[l] = keysTransposed
                ? allocate([1, config.NumKvHeads, config.HeadDim, KeyStride], dtype, device)
                : allocate([1, config.NumKvHeads, capacity, config.HeadDim], dtype, device);
            Values[l] = allocate([1, config.NumKvHeads, capacity, config.HeadDim], dtype, device);
        }

        if (dtype == ScalarType.Float32 && device.type == DeviceType.CPU)
        {
            KeyPointers = Keys.Select(k => (IntPtr)CpuKernels.Pointer(k)).ToArray();
            ValuePointers = Values.Select(v => (IntPtr)CpuKernels.Pointer(v)).ToArray();
        }
        else if (dtype == ScalarType.BFloat16 && device.type == DeviceType.CPU && keysTransposed)
        {
            IsBFloat16 = true;
            KeyPointers = Keys.Select(k => (IntPtr)CpuKernels.Pointer16(k)).ToArray();
            ValuePointers = Values.Select(v => (IntPtr)CpuKernels.Pointer16(v)).ToArray();
        }

        Bytes = (long)config.NumLayers * config.NumKvHeads * (capacity + (keysTransposed ? KeyStride : capacity)) * config.HeadDim
            * SafetensorsFile.ElementSize(dtype);
    }

    /// <summary>Gets the number of slots.</summary>
    public int Capacity { get; }

    /// <summary>Gets whether the kernels' keys and values are stored as bf16 (half the memory of f32; see
    /// <see cref="TransformerModel.KvCacheType"/>).</summary>
    public bool IsBFloat16 { get; }

    /// <summary>Gets what the slots store: f32, bf16 (the CPU kernels or libtorch) or f64 (CPU libtorch, batch-invariant).</summary>
    public ScalarType DType => Values[0].dtype;

    /// <summary>Gets whether the cache belongs to an engine that verifies draft trees.</summary>
    public bool BatchInvariant { get; }

    /// <summary>Gets whether keys are stored transposed, [1, kvHeads, headDim, <see cref="KeyStride"/>].</summary>
    public bool KeysTransposed { get; }

    /// <summary>Gets the distance between consecutive head dimensions of transposed keys (capacity rounded up to 16).</summary>
    public int KeyStride { get; }

    /// <summary>Gets the addresses of each layer's keys (f32 CPU caches; empty otherwise), for <see cref="CpuKernels"/>.</summary>
    public IntPtr[] KeyPointers { get; } = [];

    /// <summary>Gets the addresses of each layer's values (f32 CPU caches; empty otherwise).</summary>
    public IntPtr[] ValuePointers { get; } = [];

    /// <summary>Gets or sets the number of valid slots (slot i holds position i for a plain sequence).</summary>
    public int Length { get; set; }

    /// <summary>Gets the memory held by the cache.</summary>
    public long Bytes { get; }

    public Tensor[] Keys { get; }

    public Tensor[] Values { get; }

    /// <summary>Gets layer <paramref name="layer"/>'s keys of the first <paramref name="n"/> slots as [1, kvHeads, n, headDim]
    /// (a view in either layout).</summary>
    public Tensor KeysOf(int layer, int n) => KeysTransposed ? Keys[layer].narrow(3, 0, n).transpose(2, 3) : Keys[layer].narrow(2, 0, n);

    /// <summary>Copies slots <paramref name="from"/>[i] to slot <paramref name="to"/>+i in every layer (KV compaction).</summary>
    public void CopySlots(long[] from, int to)
    {
        using var scope = torch.NewDisposeScope();
        using Tensor index = torch.tensor(from, device: Keys[0].device);
        int keyDim = KeysTransposed ? 3 : 2;
        for (int l = 0; l < Keys.Length; l++)
        {
            Keys[l].narrow(keyDim, to, from.Length).copy_(Keys[l].index_select(keyDim, index));
            Values[l].narrow(2, to, from.Length).copy_(Values[l].index_select(2, index));
        }
    }

    public void Dispose()
    {
        foreach (Tensor t in Keys.Concat(Values))
        {
            t.Dispose();
        }
    }
}
