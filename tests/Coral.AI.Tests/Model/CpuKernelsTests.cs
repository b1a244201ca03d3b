using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class CpuKernelsTests
{
    [Fact]
    public unsafe void Pointer_AddressesTheTensorsValues_AfterItsStorageOffset()
    {
        using var scope = torch.NewDisposeScope();
        Tensor t = torch.arange(24, dtype: ScalarType.Float32).reshape(4, 6).narrow(0, 1, 2);
        float* p = CpuKernels.Pointer(t);
        Assert.Equal(Enumerable.Range(6, 12).Select(i => (float)i), Enumerable.Range(0, 12).Select(i => p[i]));
        Assert.Throws<ArgumentException>(() => CpuKernels.Pointer(torch.zeros(3, dtype: ScalarType.Float64)));
        Assert.Throws<ArgumentException>(() => CpuKernels.Pointer(torch.zeros(3, 4).t()));
    }

    [Theory]
    [InlineData("llama", false)]
    [InlineData("llama-tied-scaled", true)]
    [InlineData("qwen2", false)]
    [InlineData("qwen3", true)]
    [InlineData("mistral", false)]
    [InlineData("mistral", true)]
    [InlineData("llama-sharded-bf16", true)]
    [InlineData("qwen2-bf16", false)]
    [InlineData("qwen3-bf16", true)]
    [InlineData("mistral-bf16", true)]
    [InlineData("qwen2-f16", false)]
    [InlineData("mistral-f16", true)]
    [InlineData("llama-tied-scaled-f16", true)]
    [InlineData("gemma2", false)]
    [InlineData("gemma2-bf16", true)]
    [InlineData("gemma3", true)]
    [InlineData("gemma3-bf16", false)]
    [InlineData("granite", true)]
    [InlineData("granite-bf16", false)]
    [InlineData("smollm3", false)]
    [InlineData("smollm3-bf16", true)]
    [InlineData("olmo2", true)]
    [InlineData("olmo2-bf16", false)]
    [InlineData("qwen3moe-bf16", true)]
    [InlineData("olmoe-bf16", false)]
    [InlineData("mixtral-bf16", true)]
    [InlineData("granitemoe-bf16", false)]
    [InlineData("qwen2moe-bf16", true)]
    [InlineData("cohere2", false)]
    [InlineData("cohere2-bf16", true)]
    [InlineData("gemma-bf16", false)]
    public void Forward_MatchesTheLibtorchPath(string arch, bool batchInvariant)
    {
        // The same steps through both paths: a prefill, a masked tree with explicit positions, one-token steps (padded to
        // two rows in a batch-invariant cache), past the sliding window for mistral (window 8), then a wider block.
        using var kernels = TransformerModel.Load(TransformerModelTests.ModelFor(arch), torch.CPU, ScalarType.Float32, 256);
        using var libtorch = TransformerModel.Load(TransformerModelTests.ModelFor(arch), torch.CPU, ScalarType.Float32, 256, cpuKernels: false);
        Assert.True(kernels.UsesCpuKernels);
        Assert.False(libtorch.UsesCpuKernels);
        Assert.Equal(arch.EndsWith("16", StringComparison.Ordinal) && PackedMatrix.Enabled, kernels.UsesPackedWeights);
        // Under packed layers the embedding and the head stay the checkpoint's bf16 (f16) rows (no f32 copies): the
        // kernels' gather widens a row, the packed head computes the logits.
        ScalarType stored = !kernels.UsesPackedWeights ? ScalarType.Float32
            : arch.EndsWith("-f16", StringComparison.Ordinal) ? ScalarType.Float16 : ScalarType.BFloat16;
        Assert.Equal((stored, stored), (kernels.Embedding.dtype, kernels.HeadType));
        Assert.Equal((ScalarType.Float32, ScalarType.Float32), (libtorch.Embedding.dtype, libtorch.HeadType));
        using (var rows = torch.randn(3, kernels.Config.HiddenSize, generator: new Generator(4)))
        using (var batched = rows.unsqueeze(0))
        using (Tensor flat = kernels.Logits(rows), shaped = kernels.Logits(batched), reference = libtorch.Logits(rows))
        {
            Assert.Equal([1L, 3, kernels.Config.VocabSize], shaped.shape);   // [1, T, d] rows go through the same head
            Assert.Equal(TorchTestHelpers.ToArray(flat), TorchTestHelpers.ToArray(shaped));
            Assert.True(TorchTestHelpers.MaxAbsDiff(TorchTestHelpers.ToArray(flat), TorchTestHelpers.ToArray(reference)) < 1e-3f);
        }
        int v = kernels.Config.VocabSize;
        var random = new Random(11);
        long[] Tokens(int n) => Enumerable.Range(0, n).Select(_ => (long)random.Next(v)).ToArray();
        long[] prefix = Tokens(9), tree = Tokens(4), steps = Tokens(6), block = Tokens(20);
        bool[] mask = [true, false, false, false, true, true, false, false, true, false, true, false, true, true, false, true];
        long[] positions = [9, 10, 10, 11];

        using var inference = torch.inference_mode();
        using KvCache a = kernels.CreateCache(64, batchInvariant), b = libtorch.CreateCache(64, batchInvariant);
        void Same(Func<TransformerModel, KvCache, Tensor> step, string what)
        {
            using var scope = torch.NewDisposeScope();
            float[] x = TorchTestHelpers.ToArray(kernels.Logits(step(kernels, a)));
            float[] y = TorchTestHelpers.ToArray(libtorch.Logits(step(libtorch, b)));
            Assert.Equal(y.Length, x.Length);
            Assert.True(TorchTestHelpers.MaxAbsDiff(x, y) < 1e-4f, $"{arch}: {what} differs by {TorchTestHelpers.MaxAbsDiff(x, y)}");
        }

        Same((m, c) => m.Forward(prefix, c), "prefill");
        Same((m, c) => m.Forward(tree, c, positions, torch.tensor(mask, [4, 4])), "tree");
        int[] keep = [0, 1, 3];
        a.CopySlots(keep.Select(i => (long)(prefix.Length + i)).ToArray(), prefix.Length);
        b.CopySlots(keep.Select(i => (long)(prefix.Length + i)).ToArray(), prefix.Length);
        a.Length = b.Length = prefix.Length + keep.Length;
        foreach (long t in steps)
        {
            Same((m, c) => m.Forward([t], c), $"step at {a.Length}");
        }

        Same((m, c) => m.Forward(block, c), "a block wider than any before (the kernel buffers grow)");
    }

    [Fact]
    public void PackedHead_RefusesRowsOfAnotherWidth()
    {
        // The packed head reads rows by address: a wrong width is an error naming the shapes, not a read past the rows
        // (the same error on every path).
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor("llama-sharded-bf16"), torch.CPU, ScalarType.Float32, 64);
        Assert.Equal(PackedMatrix.Enabled, model.UsesPackedWeights);
        using var scope = torch.NewDisposeScope();
        var e = Assert.Throws<ArgumentException>(() => model.Logits(torch.zeros(2, model.Config.HiddenSize + 1)));
        Assert.Contains($"width {model.Config.HiddenSize}", e.Message);
    }

    [Theory]
    [InlineData("llama-sharded-bf16")]   // packed head: written straight into the buffer
    [InlineData("llama")]                // f32 values: libtorch's GEMM and a copy
    public void LogitsIntoABuffer_EqualTheTensorForm(string name)
    {
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor(name), torch.CPU, ScalarType.Float32, 64);
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        int v = model.Config.VocabSize;
        Tensor hidden = torch.randn(3, model.Config.HiddenSize, generator: new torch.Generator(7));
        float[] buffer = new float[(3 * v) + 5];
        Array.Fill(buffer, float.NaN);
        model.Logits(hidden, buffer);
        Assert.Equal(TorchTestHelpers.ToArray(model.Logits(hidden)), buffer[..(3 * v)]);
        Assert.All(buffer[(3 * v)..], x => Assert.True(float.IsNaN(x), "wrote past the rows"));
        var e = Assert.Throws<ArgumentException>(() => model.Logits(hidden, new float[(3 * v) - 1]));
        Assert.Contains($"need {3 * v} floats", e.Message);
        Assert.Throws<ArgumentException>(() => model.Logits(torch.zeros(2, model.Config.HiddenSize + 1), buffer));
    }

    [Fact]
    public void TokenOutsideTheVocabulary_IsATypedError()
    {
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor("llama"), torch.CPU, ScalarType.Float32, 64);
        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        using KvCache cache = model.CreateCache(16);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => model.Forward([model.Config.VocabSize], cache));
        Assert.Contains("outside the vocabulary", e.Message);
        Assert.Equal(0, cache.Length);
    }

    /// <summary>A bf16 or f16 embedding table gathers to the f32 rows its f32 copy gives (both widen exactly — for f16
    /// also subnormals, signed zeros and the largest finite values), with a width that leaves a tail after the 32-wide
    /// vectors, strided output, a repeated last id for padded rows, and a named error for an id outside the vocabulary.</summary>
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    public unsafe void Gather_From16BitRows_EqualsTheF32Copy(ScalarType format)
    {
        using var scope = torch.NewDisposeScope();
        Tensor f32 = torch.randn([50, 70], generator: new Generator(8));
        if (format == ScalarType.Float16)
        {
            float[] special = [6e-8f, -6e-8f, 3e-5f, -1e-6f, 6.1035e-5f, -0f, 0f, 65504f, -65504f, 1e-4f, 2.5e-7f];
            f32[3, TensorIndex.Slice(0, special.Length)] = torch.tensor(special);     // early in a row: the vector path
            f32[49, TensorIndex.Slice(64, 64 + 6)] = torch.tensor(special[..6]);     // the scalar tail
        }

        f32 = f32.to(format).to(ScalarType.Float32);
        Tensor rows16 = f32.to(format);
        long[] ids = [3, 49, 0];
        var a = new float[4 * 80];
        var b = new float[4 * 80];
        fixed (float* pa = a, pb = b)
        {
            CpuKernels.Gather(CpuKernels.Pointer(f32), 50, ids, 4, pa, 70, 80);
            CpuKernels.Gather(CpuKernels.Pointer16(rows16), format, 50, ids, 4, pb, 70, 80);
        }

        Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            fixed (float* p = b)
            {
                CpuKernels.Gather(CpuKernels.Pointer16(rows16), format, 50, [50], 1, p, 70);
            }
        });

        Assert.Equal(a.Select(BitConverter.SingleToInt32Bits), b.Select(BitConverter.SingleToInt32Bits));   // -0 stays -0
        Assert.Equal(TorchTestHelpers.ToArray(f32[49]), b[80..150]);
        Assert.Equal(b[160..230], b[240..310]);   // a padded row repeats the last id
    }

    /// <summary>The KV cache is allocated unwritten; the score loop reads whole 16-key blocks, so the key opening a block
    /// clears the block's other lanes: after 5 tokens over garbage, lanes 5–15 hold zeros (not the garbage, whose
    /// subnormals would cost microcode assists), and the logits are those of a clean cache.</summary>
    [Fact]
    public void KeysOpeningABlock_ClearItsOtherLanes()
    {
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor("llama-tied-scaled-bf16"), torch.CPU, ScalarType.Float32, 64);
        long[] ids = [5, 9, 14, 200, 31];
        using var inference = torch.inference_mode();
        using KvCache dirty = model.CreateCache(64), clean = model.CreateCache(64);
        foreach (Tensor k in dirty.Keys)
        {
            k.fill_(1e-40f);   // subnormal garbage
        }

        foreach (Tensor k in clean.Keys)
        {
            k.zero_();
        }

        using var scope = torch.NewDisposeScope();
        float[] a = TorchTestHelpers.ToArray(model.Logits(model.Forward(ids, dirty)));
        float[] b = TorchTestHelpers.ToArray(model.Logits(model.Forward(ids, clean)));
        Assert.Equal(b, a);
        foreach (Tensor k in dirty.Keys)   // [1, kvHeads, hd, keyStride]
        {
            Assert.Equal(0f, k.narrow(3, ids.Length, 16 - ids.Length).abs().max().item<float>());
            Assert.Equal(1e-40f, k.narrow(3, 16, 16).abs().max().item<float>());   // the next block: not yet opened
        }
    }
}
