using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

internal static class TorchTestHelpers
{
    public static float[] ToArray(Tensor t)
    {
        using Tensor c = t.to(ScalarType.Float32).cpu().contiguous();
        return MemoryMarshal.Cast<byte, float>(c.bytes).ToArray();
    }

    public static float MaxAbsDiff(float[] a, float[] b)
    {
        Assert.Equal(a.Length, b.Length);
        float m = 0;
        for (int i = 0; i < a.Length; i++)
        {
            m = MathF.Max(m, MathF.Abs(a[i] - b[i]));
        }

        return m;
    }

    /// <summary>Runs the full sequence in one forward and returns logits for every position [T*V].</summary>
    public static float[] FullLogits(TransformerModel model, long[] ids)
    {
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        using KvCache cache = model.CreateCache(ids.Length + 8);
        Tensor hidden = model.Forward(ids, cache);
        return ToArray(model.Logits(hidden));
    }
}
