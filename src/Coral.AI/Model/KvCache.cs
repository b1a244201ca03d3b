using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// The key/value cache of one sequence, allocated once: per layer K and V of shape [1, kvHeads, capacity, headDim] (the
/// batch dimension attention takes, so that reading the first n slots is one narrow).
/// Slots are written in place; rolling back means lowering <see cref="Length"/>, never reallocating. Engines with a
/// drafter keep it in f64 on CPU (see <see cref="DecoderLayer.Attention"/>: tree verification then equals one-token steps
/// bit for bit); plain engines keep it in f32.
/// </summary>
internal sealed class KvCache : IDisposable
{
    public KvCache(ModelConfig config, int capacity, ScalarType dtype, Device device)
    {
        Capacity = capacity;
        Keys = new Tensor[config.NumLayers];
        Values = new Tensor[config.NumLayers];
        for (int l = 0; l < config.NumLayers; l++)
        {
            Keys[l] = torch.zeros([1, config.NumKvHeads, capacity, config.HeadDim], dtype, device);
            Values[l] = torch.zeros([1, config.NumKvHeads, capacity, config.HeadDim], dtype, device);
        }

        Bytes = 2L * config.NumLayers * config.NumKvHeads * capacity * config.HeadDim * SafetensorsFile.ElementSize(dtype);
    }

    /// <summary>Gets the number of slots.</summary>
    public int Capacity { get; }

    /// <summary>Gets or sets the number of valid slots (slot i holds position i for a plain sequence).</summary>
    public int Length { get; set; }

    /// <summary>Gets the memory held by the cache.</summary>
    public long Bytes { get; }

    public Tensor[] Keys { get; }

    public Tensor[] Values { get; }

    /// <summary>Copies slots <paramref name="from"/>[i] to slot <paramref name="to"/>+i in every layer (KV compaction).</summary>
    public void CopySlots(long[] from, int to)
    {
        using var scope = torch.NewDisposeScope();
        using Tensor index = torch.tensor(from, device: Keys[0].device);
        for (int l = 0; l < Keys.Length; l++)
        {
            Keys[l].narrow(2, to, from.Length).copy_(Keys[l].index_select(2, index));
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
