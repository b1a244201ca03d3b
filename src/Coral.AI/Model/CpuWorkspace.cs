using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>
/// A model's activation buffers for the CPU kernel path (<see cref="CpuKernels"/>), allocated once and grown when a
/// forward has more rows: the residual stream, the normalised input, qkv, attention output, projection output, gate/up
/// and the SwiGLU product. The GEMMs write into them with <c>addmm_</c> (β = 0); the kernels read and write them through
/// their addresses. One forward at a time per model (the engine's gate already serialises requests).
/// </summary>
internal sealed unsafe class CpuWorkspace : IDisposable
{
    private readonly long _d, _qkv, _attn, _ff;
    private Tensor[] _buffers = [];

    public CpuWorkspace(ModelConfig c)
    {
        (_d, _attn, _ff) = (c.HiddenSize, (long)c.NumHeads * c.HeadDim, c.IntermediateSize);
        _qkv = _attn + 2L * c.NumKvHeads * c.HeadDim;
    }

    /// <summary>Gets the rows the buffers hold.</summary>
    public int Capacity { get; private set; }

    public float* X { get; private set; }

    public float* H { get; private set; }

    public float* Qkv { get; private set; }

    public float* O { get; private set; }

    public float* Proj { get; private set; }

    public float* GateUp { get; private set; }

    public float* Act { get; private set; }

    /// <summary>The buffers' first <paramref name="rows"/> rows as tensors (created in the caller's dispose scope).</summary>
    public Views Rows(int rows)
    {
        if (rows > Capacity)
        {
            Grow(Math.Max(rows, Math.Min(2 * Capacity, 1024)));
        }

        Tensor V(int i) => _buffers[i].narrow(0, 0, rows);
        return new Views(V(0), V(1), V(2), V(3), V(4), V(5), V(6));
    }

    private void Grow(int rows)
    {
        foreach (Tensor t in _buffers)
        {
            t.Dispose();
        }

        using var noGrad = torch.no_grad();
        long[] widths = [_d, _d, _qkv, _attn, _d, 2 * _ff, _ff];
        _buffers = widths.Select(w => torch.zeros([rows, w], ScalarType.Float32).DetachFromDisposeScope()).ToArray();
        X = P(0);
        H = P(1);
        Qkv = P(2);
        O = P(3);
        Proj = P(4);
        GateUp = P(5);
        Act = P(6);
        Capacity = rows;

        float* P(int i) => CpuKernels.Pointer(_buffers[i]);
    }

    public void Dispose()
    {
        foreach (Tensor t in _buffers)
        {
            t.Dispose();
        }

        _buffers = [];
        Capacity = 0;
    }

    /// <summary>Row views of the buffers for one forward.</summary>
    public readonly record struct Views(Tensor X, Tensor H, Tensor Qkv, Tensor O, Tensor Proj, Tensor GateUp, Tensor Act);
}
