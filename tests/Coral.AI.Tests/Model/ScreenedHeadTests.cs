using System.Numerics.Tensors;
using TorchSharp;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI.Tests;

public class ScreenedHeadTests
{
    private const int V = 1037, K = 96;   // V is not a multiple of the 64-token block nor of 16

    /// <summary>A head [V, K] with bf16 (or <paramref name="values"/>) values, whose rows 700 and 900 equal row 300 (exact
    /// ties) and row 10 is zero.</summary>
    private static Tensor Head(int seed, ScalarType values = ScalarType.BFloat16)
    {
        var gen = new torch.Generator((ulong)seed);
        Tensor w = (torch.randn([V, K], generator: gen) * 0.05).to(values).to(ScalarType.Float32);
        w[700] = w[300];
        w[900] = w[300];
        w[10] = torch.zeros(K);
        return w.contiguous();
    }

    private static unsafe float[] Logits(PackedMatrix packed, float[] x)
    {
        var y = new float[V];
        fixed (float* xp = x, yp = y)
        {
            packed.Multiply(xp, 1, yp);
        }

        return y;
    }

    private static int FullArgMax(PackedMatrix packed, float[] x) => TensorPrimitives.IndexOfMax<float>(Logits(packed, x));

    [Theory]
    [InlineData(ScalarType.Float32)]    // f32 storage of bf16 values
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]    // an f16 head: f16 values, packed and read as f16
    public unsafe void TryArgMax_IsTheFullHeadsArgMax_WithFewExactLogits(ScalarType storage)
    {
        if (!ScreenedHead.Supported)
        {
            using var s = torch.NewDisposeScope();
            Assert.Null(ScreenedHead.TryCreate(torch.ones(4, 40)));
            return;
        }

        using var scope = torch.NewDisposeScope();
        Tensor w = Head(5, storage == ScalarType.Float16 ? ScalarType.Float16 : ScalarType.BFloat16);
        float[] values = TorchTestHelpers.ToArray(w);
        Tensor stored = storage == ScalarType.Float32 ? w : w.to(storage).contiguous();
        using PackedMatrix packed = PackedMatrix.TryCreateFromRows(stored)!;
        Assert.Equal(storage == ScalarType.Float16 ? ScalarType.Float16 : ScalarType.BFloat16, packed.Format);
        using ScreenedHead screen = ScreenedHead.TryCreate(stored)!;
        Assert.Null(ScreenedHead.TryCreate(torch.randn(8, 16)));   // f32 values a bf16 head would not reproduce

        var random = new Random(11);
        int decided = 0, few = 0;
        float tightness = 0;   // the largest error seen, as a fraction of its bound
        for (int trial = 0; trial < 400; trial++)
        {
            // Peaked inputs (a row's direction plus noise, as a trained model's hidden state), flat ones, ties and scales.
            int target = trial % 5 == 0 ? 300 : random.Next(V);
            double peak = trial % 4 == 3 ? 0 : random.NextDouble() * 40;
            double scale = Math.Pow(10, random.Next(-3, 4));
            float[] x = Enumerable.Range(0, K).Select(k => (float)(scale * ((peak * values[(target * K) + k]) + (random.NextDouble() - 0.5)))).ToArray();
            float[] logits = Logits(packed, x);
            int expected = TensorPrimitives.IndexOfMax<float>(logits);
            fixed (float* xp = x)
            {
                if (screen.TryArgMax(xp, out int token))
                {
                    decided++;
                    Assert.True(expected == token, $"trial {trial}: screen {token}, full head {expected}");
                    few += screen.LastCandidates <= 16 ? 1 : 0;
                }
            }

            // The proof's premise, token by token: the int8 value is within its bound of the logit the full head computes.
            for (int v = 0; v < V; v++)
            {
                (float approx, float bound) = screen.Screened(v);
                Assert.True(Math.Abs(approx - logits[v]) <= bound, $"trial {trial}, token {v}: |{approx} - {logits[v]}| > {bound}");
                tightness = Math.Max(tightness, Math.Abs(approx - logits[v]) / Math.Max(bound, 1e-30f));
            }

            if (trial % 5 == 0 && peak > 20)
            {
                Assert.Equal(300, expected);   // the tie between rows 300, 700 and 900 goes to the first, in both
            }
        }

        Assert.Equal(400, decided);   // V < MaxCandidates: the screen always decides here
        Assert.InRange(tightness, 0.05f, 1f);   // a bound, and not a vacuous one
        Assert.True(few > 200, $"only {few} of 400 inputs were decided with at most 16 exact logits");

        // Several rows (passes of PassRows): each row's own full-head argmax.
        for (int rows = 2; rows <= 5; rows++)
        {
            float[] x = Enumerable.Range(0, rows * K).Select(i => (float)((30 * values[(((i / K) * 97 + 5) % V * K) + (i % K)]) + random.NextDouble() - 0.5)).ToArray();
            var tokens = new int[rows];
            fixed (float* xp = x)
            {
                Assert.True(screen.TryArgMax(xp, rows, tokens));
            }

            for (int r = 0; r < rows; r++)
            {
                Assert.Equal(FullArgMax(packed, x[(r * K)..((r + 1) * K)]), tokens[r]);
            }
        }

        // Approximate logits (a drafter's): every token's a, within its bound of the full head's logit; several rows give
        // each row the values it gets alone.
        for (int rows = 1; rows <= ScreenedHead.PassRows + 1; rows++)
        {
            float[] x = Enumerable.Range(0, rows * K).Select(i => (float)((10 * values[(((i / K) * 31 + 2) % V * K) + (i % K)]) + random.NextDouble() - 0.5)).ToArray();
            var approx = new float[rows * V];
            fixed (float* xp = x, yp = approx)
            {
                Assert.True(screen.TryApproxLogits(xp, rows, yp, V));
                float[] alone = new float[V];
                fixed (float* ap = alone)
                {
                    Assert.True(screen.TryApproxLogits(xp + ((rows - 1) * K), 1, ap, V));
                }

                Assert.Equal(alone, approx[((rows - 1) * V)..]);
                float[] logits = Logits(packed, x[((rows - 1) * K)..]);
                for (int v = 0; v < V; v++)
                {
                    (float a, float bound) = screen.Screened(v);
                    Assert.Equal(a, alone[v]);
                    Assert.True(Math.Abs(alone[v] - logits[v]) <= bound, $"token {v}: |{alone[v]} - {logits[v]}| > {bound}");
                }
            }
        }

        // A copy for approximations only (a router group's) keeps no exact rows: the same values, and no argmax.
        using (Tensor temporary = stored.clone())
        using (ScreenedHead approximateOnly = ScreenedHead.TryCreate(temporary, approximateOnly: true)!)
        {
            float[] x = Enumerable.Range(0, 3 * K).Select(_ => (float)(random.NextDouble() - 0.5)).ToArray();
            float[] expected = new float[3 * V], actual = new float[3 * V];
            fixed (float* xp = x, ep = expected, ap = actual)
            {
                Assert.True(screen.TryApproxLogits(xp, 3, ep, V));
                Assert.True(approximateOnly.TryApproxLogits(xp, 3, ap, V));
                Assert.False(approximateOnly.TryArgMax(xp, out _));
            }

            Assert.Equal(expected, actual);
        }

        // Not finite: not decided (the caller computes the logits).
        float[] bad = new float[K];
        bad[3] = float.NaN;
        fixed (float* xp = bad)
        {
            Assert.False(screen.TryArgMax(xp, out _));
        }

        // Zero input (no scale to quantize it with): not decided either, and no approximation.
        fixed (float* xp = new float[K], yp = new float[V])
        {
            Assert.False(screen.TryArgMax(xp, out _));
            Assert.False(screen.TryApproxLogits(xp, 1, yp, V));
        }
    }

    [Fact]
    public void Model_ArgMax_EqualsTheLogitsArgMax_AndGreedyDecodingIsUnchanged()
    {
        using var model = TransformerModel.Load(TransformerModelTests.ModelFor("qwen2-bf16"), torch.CPU, ScalarType.Float32, 256, headType: ScalarType.BFloat16);
        Assert.Equal(PackedMatrix.Enabled && ScreenedHead.Enabled, model.Screen is not null);
        if (model.Screen is null)
        {
            return;
        }

        using var inference = torch.inference_mode();
        using var scope = torch.NewDisposeScope();
        using KvCache cache = model.CreateCache(128);
        long[] tokens = [1, 5, 9, 2];
        Tensor hidden = model.Forward(tokens, cache);
        for (int i = 0; i < 40; i++)
        {
            Tensor last = hidden.narrow(0, hidden.shape[0] - 1, 1);
            int expected = TensorPrimitives.IndexOfMax<float>(TorchTestHelpers.ToArray(model.Logits(last)));
            Assert.Equal(expected, model.ArgMax(last));
            if (hidden.shape[0] > 1)
            {
                // Every row of a multi-row forward, as the verification of a small tree asks.
                var greedy = new int[hidden.shape[0]];
                Assert.True(model.TryArgMax(hidden, greedy));
                float[] all = TorchTestHelpers.ToArray(model.Logits(hidden));
                int v = model.Config.VocabSize;
                Assert.Equal(Enumerable.Range(0, greedy.Length).Select(r => TensorPrimitives.IndexOfMax<float>(all.AsSpan(r * v, v))), greedy);
            }

            hidden = model.Forward(i % 4 == 0 ? [expected] : i % 4 == 1 ? [expected, 7] : [expected, 3, 11], cache);
        }

        Assert.Null(model.ArgMax(hidden.repeat(2, 1)));   // one row only
        Assert.False(model.TryArgMax(hidden.repeat(2, 1), new int[3]));   // a token per row
    }
}
