namespace Coral.AI.Tests;

/// <summary>Sets <see cref="PackedMatrix.Int8Activations"/> for the Q8_0 matrices packed until disposal, then restores it
/// (tests run one at a time).</summary>
internal sealed class Int8Activations : IDisposable
{
    private readonly bool _was = PackedMatrix.Int8Activations;

    public Int8Activations(bool on) => PackedMatrix.Int8Activations = on && PackedMatrix.Int8Supported;

    public void Dispose() => PackedMatrix.Int8Activations = _was;
}
