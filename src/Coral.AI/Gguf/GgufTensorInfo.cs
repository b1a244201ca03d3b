namespace Coral.AI;

/// <summary>One entry of a GGUF tensor table.</summary>
/// <param name="Name">The GGUF name (<c>blk.0.attn_q.weight</c>).</param>
/// <param name="Shape">The shape, slowest dimension first (as Hugging Face and PyTorch write it: [rows, columns]).</param>
/// <param name="Type">The storage type.</param>
/// <param name="Offset">The data's position in the file.</param>
/// <param name="Bytes">The data's length.</param>
internal sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset, long Bytes)
{
    public long Elements => Shape.Aggregate(1L, (a, b) => a * b);
}
