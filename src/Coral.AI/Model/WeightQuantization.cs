namespace Coral.AI;

/// <summary>How a model's decoder projections are stored for the forward (<see cref="TransformerModel.Load"/>).</summary>
internal enum WeightQuantization
{
    /// <summary>The checkpoint's values (packed as bf16/f16 where they are such values).</summary>
    None,

    /// <summary>Q8_0 blocks (<see cref="QuantBlocks"/>): q, k, v, o, gate, up and down (experts included) quantized at load;
    /// the embedding, the LM head and the norms keep the checkpoint's values.</summary>
    Q8_0,

    /// <summary>Q4_0 blocks (<see cref="QuantBlocks"/>: 4-bit levels, an f16 scale per 32 inputs) for the same weights as
    /// <see cref="Q8_0"/>: a quarter of bf16's bytes and a visible loss of accuracy.</summary>
    Q4_0,

    /// <summary>A GGUF file's Q4_K projections as they are, taken in place of <see cref="Q8_0"/> blocks (never quantized
    /// from floats): 4-bit levels, per 32 inputs a 6-bit sub-scale and sub-minimum, per 256 a d and dmin (value =
    /// d · sub-scale · level − dmin · sub-min).</summary>
    Q4_K,
}
