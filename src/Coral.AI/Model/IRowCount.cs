namespace Coral.AI;

/// <summary>A micro-kernel's row count as a type (<see cref="RowCount"/>), so that the JIT compiles one body per count
/// with the other rows' code removed (<see cref="PackedMatrix"/>, <see cref="ScreenedHead"/>).</summary>
internal interface IRowCount
{
    static abstract int Count { get; }
}
