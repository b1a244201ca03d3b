using System.Numerics.Tensors;
using System.Runtime.CompilerServices;
using System.Runtime.Intrinsics;
using TorchSharp;
using TorchSharp.Utils;
using static TorchSharp.torch;
using Tensor = TorchSharp.torch.Tensor;

namespace Coral.AI;

/// <summary>
/// The non-GEMM parts of a decoder layer on CPU, in C# over the tensors' own memory: RMSNorm, RoPE with the KV-cache
/// write, attention, SwiGLU and the residual adds. At the demo width each of these is a few hundred floats per row, where
/// a libtorch call costs 2–4 µs whatever it computes; a layer took ≈ 46 such calls, so a one-token step was mostly call
/// overhead. Here a layer is its four GEMMs (<see cref="PackedMatrix"/> for bf16-valued weights, else libtorch into
/// preallocated buffers) and these loops; attention splits its (row, head) pairs with <see cref="CpuParallel"/>.
/// </summary>
/// <remarks>
/// Every routine handles each row on its own, in the same order of operations whatever the other rows are: a token
/// computes the same bits alone or as a node of a verified tree (attention sums over the keys a query sees, in slot
/// order, skipping the others), which is what lossless greedy speculation needs; the f64 cache of the libtorch path is
/// not needed here. Set <c>CORAL_CPU_KERNELS=0</c> to run the libtorch path instead (for A/B measurements).
/// </remarks>
internal static unsafe class CpuKernels
{
    /// <summary>Gets whether CPU f32 models use these kernels (<c>CORAL_CPU_KERNELS</c>, default on).</summary>
    public static bool Enabled { get; } = Environment.GetEnvironmentVariable("CORAL_CPU_KERNELS") is not ("0" or "false");

    /// <summary>Gets or sets whether attention's (row, head) parts are split with <see cref="CpuParallel"/>'s helpers.</summary>
    public static bool ParallelAttention { get; set; } = true;

    /// <summary>The address of a contiguous f32 CPU tensor's first element (storage offset included).</summary>
    public static float* Pointer(Tensor t)
    {
        if (t.dtype != ScalarType.Float32 || t.device_type != DeviceType.CPU || !t.is_contiguous())
        {
            throw new ArgumentException($"Expected a contiguous f32 CPU tensor, got {t.dtype} on {t.device} (contiguous: {t.is_contiguous()}).", nameof(t));
        }

        using TensorAccessor<float> accessor = t.data<float>();
        IntPtr p = DataPointer(accessor);
        return p == IntPtr.Zero && t.numel() > 0 ? throw new InvalidOperationException("TorchSharp returned no data pointer.") : (float*)p;
    }

    // TorchSharp keeps the native data pointer in its accessor without exposing it; TorchSharp's version is pinned
    // centrally and CpuKernelsTests checks the address against the tensor's values.
    [UnsafeAccessor(UnsafeAccessorKind.Field, Name = "_tensor_data_ptr")]
    private static extern ref IntPtr DataPointer(TensorAccessor<float> accessor);

    /// <summary>y[r] = x[r] · rsqrt(mean(x[r]²) + eps) · w for each of <paramref name="rows"/> rows of width d.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RmsNorm(float* x, float* w, float* y, int rows, int d, float eps)
    {
        var weight = new ReadOnlySpan<float>(w, d);
        for (int r = 0; r < rows; r++)
        {
            var xs = new ReadOnlySpan<float>(x + (long)r * d, d);
            var ys = new Span<float>(y + (long)r * d, d);
            float s = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(xs) / d + eps);
            TensorPrimitives.Multiply(xs, s, ys);
            TensorPrimitives.Multiply(ys, weight, ys);
        }
    }

    /// <summary>The model's norm on each row: <see cref="RmsNorm"/>, or <see cref="LayerNorm"/> when
    /// <paramref name="layerNorm"/> (Cohere).</summary>
    public static void Norm(bool layerNorm, float* x, float* w, float* y, int rows, int d, float eps)
    {
        if (layerNorm)
        {
            LayerNorm(x, w, y, rows, d, eps);
        }
        else
        {
            RmsNorm(x, w, y, rows, d, eps);
        }
    }

    /// <summary>y[r] = (x[r] − mean) · rsqrt(mean((x[r] − mean)²) + eps) · w for each row (LayerNorm without bias).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void LayerNorm(float* x, float* w, float* y, int rows, int d, float eps)
    {
        var weight = new ReadOnlySpan<float>(w, d);
        for (int r = 0; r < rows; r++)
        {
            var xs = new ReadOnlySpan<float>(x + (long)r * d, d);
            var ys = new Span<float>(y + (long)r * d, d);
            float mean = TensorPrimitives.Sum(xs) / d;
            TensorPrimitives.Subtract(xs, mean, ys);
            float s = 1f / MathF.Sqrt(TensorPrimitives.SumOfSquares(ys) / d + eps);
            TensorPrimitives.Multiply(ys, s, ys);
            TensorPrimitives.Multiply(ys, weight, ys);
        }
    }

    /// <summary>x[i] += y[i] for n elements.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Add(float* x, float* y, long n)
    {
        for (long i = 0; i < n; i += int.MaxValue)
        {
            int m = (int)Math.Min(n - i, int.MaxValue);
            var xs = new Span<float>(x + i, m);
            TensorPrimitives.Add(xs, new ReadOnlySpan<float>(y + i, m), xs);
        }
    }

    /// <summary>Adds <paramref name="bias"/> [n] to each of <paramref name="rows"/> rows [n] of x.</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void AddRows(float* x, float* bias, int rows, int n)
    {
        for (int r = 0; r < rows; r++)
        {
            Add(x + (long)r * n, bias, n);
        }
    }

    /// <summary>act[r] = silu(g) · u where gu[r] = [g | u] (two halves of width ff).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void SiluMul(float* gu, float* act, int rows, int ff)
    {
        for (int r = 0; r < rows; r++)
        {
            var g = new ReadOnlySpan<float>(gu + 2L * r * ff, ff);
            var u = new ReadOnlySpan<float>(gu + 2L * r * ff + ff, ff);
            var a = new Span<float>(act + (long)r * ff, ff);
            TensorPrimitives.Sigmoid(g, a);
            TensorPrimitives.Multiply(a, g, a);
            TensorPrimitives.Multiply(a, u, a);
        }
    }

    /// <summary>act[r] = gelu(g) · u where gu[r] = [g | u], gelu with the tanh approximation (<c>gelu_pytorch_tanh</c>):
    /// 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void GeluTanhMul(float* gu, float* act, int rows, int ff)
    {
        const float Beta = 0.7978845608028654f;   // √(2/π)
        for (int r = 0; r < rows; r++)
        {
            var g = new ReadOnlySpan<float>(gu + 2L * r * ff, ff);
            var u = new ReadOnlySpan<float>(gu + 2L * r * ff + ff, ff);
            var a = new Span<float>(act + (long)r * ff, ff);
            TensorPrimitives.Multiply(g, g, a);                       // g²
            TensorPrimitives.Multiply(a, 0.044715f, a);
            TensorPrimitives.Add(a, 1f, a);                           // 1 + 0.044715·g²
            TensorPrimitives.Multiply(a, g, a);                       // g + 0.044715·g³
            TensorPrimitives.Multiply(a, Beta, a);
            TensorPrimitives.Tanh(a, a);
            TensorPrimitives.Add(a, 1f, a);
            TensorPrimitives.Multiply(a, 0.5f, a);                    // (1 + tanh(·)) / 2
            TensorPrimitives.Multiply(a, g, a);
            TensorPrimitives.Multiply(a, u, a);
        }
    }

    /// <summary>
    /// Per row of qkv [rows, stride] = [q heads | k heads | v heads]: RMS-normalises each q/k head when
    /// <paramref name="qkNorm"/> [heads + kvHeads, hd] is given (Qwen3), rotates the q and k heads by RoPE at the row's
    /// position (rotate_half convention: x·cos + roll(x, hd/2)·sinSigned) and writes the first <paramref name="count"/>
    /// rows' k and v heads into cache slot start + r of <paramref name="cache"/>'s layer <paramref name="layer"/>.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void RopeAndCache(float* qkv, int rows, int count, int stride, int heads, int kvHeads, int hd,
        float* cos, float* sinSigned, int[] positions, float* qkNorm, float eps, KvCache cache, int layer, int start)
    {
        int half = hd / 2, qkHeads = heads + kvHeads, keyStride = cache.KeyStride;
        float* keys = (float*)cache.KeyPointers[layer], values = (float*)cache.ValuePointers[layer];
        ushort* keys16 = (ushort*)cache.KeyPointers[layer], values16 = (ushort*)cache.ValuePointers[layer];
        bool bf16 = cache.IsBFloat16;
        float* tmp = stackalloc float[hd];
        var t = new Span<float>(tmp, hd);
        for (int r = 0; r < rows; r++)
        {
            float* c = cos + (long)positions[r] * hd, s = sinSigned + (long)positions[r] * hd;
            for (int h = 0; h < qkHeads; h++)
            {
                float* v = qkv + (long)r * stride + (long)h * hd;
                if (qkNorm != null)
                {
                    RmsNorm(v, qkNorm + (long)h * hd, v, 1, hd, eps);
                }

                var lo = new Span<float>(v, half);
                var hi = new Span<float>(v + half, half);
                new ReadOnlySpan<float>(v, hd).CopyTo(t);
                TensorPrimitives.Multiply(t[..half], new ReadOnlySpan<float>(c, half), lo);
                TensorPrimitives.MultiplyAdd(t[half..], new ReadOnlySpan<float>(s, half), lo, lo);
                TensorPrimitives.Multiply(t[half..], new ReadOnlySpan<float>(c + half, half), hi);
                TensorPrimitives.MultiplyAdd(t[..half], new ReadOnlySpan<float>(s + half, half), hi, hi);
            }

            if (r >= count)
            {
                continue;
            }

            for (int g = 0; g < kvHeads; g++)
            {
                if (bf16)
                {
                    CacheBFloat16(qkv + (long)r * stride, heads, g, hd, qkHeads, keys16, values16, keyStride, cache.Capacity, start + r);
                    continue;
                }

                // Keys are stored transposed, [kvHeads, hd, keyStride], so that scores come 16 keys to a vector.
                float* k = qkv + (long)r * stride + (long)(heads + g) * hd, kt = keys + (long)g * hd * keyStride + start + r;
                // A key that opens a 16-key block clears the block's other lanes: the score loop reads whole blocks, and
                // the cache is allocated unwritten (KvCache), so they could hold anything — subnormals cost microcode
                // assists even in lanes whose scores are never used.
                bool opensBlock = (start + r) % 16 == 0;
                for (int d = 0; d < hd; d++)
                {
                    kt[(long)d * keyStride] = k[d];
                    if (opensBlock)
                    {
                        new Span<float>(kt + ((long)d * keyStride) + 1, 15).Clear();
                    }
                }

                new ReadOnlySpan<float>(qkv + (long)r * stride + (long)(qkHeads + g) * hd, hd)
                    .CopyTo(new Span<float>(values + ((long)g * cache.Capacity + start + r) * hd, hd));
            }
        }
    }

    /// <summary>Writes kv head <paramref name="g"/> of one row (its rotated key and its value) into slot
    /// <paramref name="slot"/> of a bf16 cache, rounded to nearest even; a key opening a 16-key block clears the block.</summary>
    private static void CacheBFloat16(float* row, int heads, int g, int hd, int qkHeads, ushort* keys, ushort* values, int keyStride,
        int capacity, int slot)
    {
        float* k = row + (long)(heads + g) * hd, v = row + (long)(qkHeads + g) * hd;
        ushort* kt = keys + (long)g * hd * keyStride + slot, vs = values + ((long)g * capacity + slot) * hd;
        bool opensBlock = slot % 16 == 0;
        for (int d = 0; d < hd; d++)
        {
            kt[(long)d * keyStride] = ToBFloat16(k[d]);
            if (opensBlock)
            {
                new Span<ushort>(kt + ((long)d * keyStride) + 1, 15).Clear();
            }

            vs[d] = ToBFloat16(v[d]);
        }
    }

    /// <summary>f32 → bf16, rounded to nearest even (finite values).</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    internal static ushort ToBFloat16(float x)
    {
        uint u = BitConverter.SingleToUInt32Bits(x);
        return (ushort)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
    }

    /// <summary>
    /// Softmax attention of the q heads in qkv [rows, stride] over slots [0, total) of <paramref name="cache"/>'s layer,
    /// writing o [rows, heads·hd]. <paramref name="mask"/> [count, total] (true = attend) or null (every slot visible).
    /// Rows at or past <paramref name="count"/> repeat row 0 (rows padding a step to whole f32 GEMM blocks) and copy its
    /// result.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Attention(float* qkv, int rows, int count, int stride, int heads, int kvHeads, int hd, KvCache cache, int layer,
        int total, bool[]? mask, float scale, float* o, float softcap = 0)
    {
        // One part per (row, head), split with the GEMMs' helper threads: each part computes exactly what it computes
        // alone, so the split changes no bits.
        var work = new AttentionWork(qkv, stride, heads, kvHeads, hd, cache, layer, total, mask, scale, softcap, o);
        if (ParallelAttention)
        {
            CpuParallel.Run(work, count * heads);
        }
        else
        {
            for (int part = 0; part < count * heads; part++)
            {
                work.Run(part);
            }
        }
        long width = (long)heads * hd;
        for (int r = count; r < rows; r++)
        {
            new ReadOnlySpan<float>(o, (int)width).CopyTo(new Span<float>(o + r * width, (int)width));
        }
    }

    /// <summary>
    /// <see cref="Attention"/> for several sequences' rows in one dispatch to the helper threads (continuous batching):
    /// segment i's rows attend to its own cache; its parts are (row, head) pairs as in <see cref="Attention"/>, each
    /// computing exactly what it computes there. Rows equal counts (no padded rows).
    /// </summary>
    public static void AttentionSegments(ReadOnlySpan<AttentionSegment> segments, int stride, int heads, int kvHeads, int hd, int layer,
        float scale, float* o, float softcap = 0)
    {
        var works = new AttentionWork[segments.Length];
        var starts = new int[segments.Length + 1];
        for (int i = 0; i < segments.Length; i++)
        {
            AttentionSegment g = segments[i];
            works[i] = new AttentionWork((float*)g.Qkv, stride, heads, kvHeads, hd, g.Cache, layer, g.Total, g.Mask, scale, softcap,
                o + ((long)g.Row * heads * hd));
            starts[i + 1] = starts[i] + (g.Count * heads);
        }

        var all = new SegmentsWork(works, starts);
        if (ParallelAttention)
        {
            CpuParallel.Run(all, starts[^1]);
        }
        else
        {
            for (int part = 0; part < starts[^1]; part++)
            {
                all.Run(part);
            }
        }
    }

    /// <summary>The parts of several <see cref="AttentionWork"/>s as one list: segment i's parts are
    /// <c>starts[i] .. starts[i + 1] − 1</c>.</summary>
    private sealed class SegmentsWork(AttentionWork[] works, int[] starts) : ICpuWork
    {
        public void Run(int part)
        {
            int i = Array.BinarySearch(starts, part);   // starts rise strictly: every segment has rows
            i = i >= 0 ? i : ~i - 1;
            works[i].Run(part - starts[i]);
        }
    }

    /// <summary>One (row, head) of <see cref="Attention"/> per part.</summary>
    private sealed class AttentionWork(float* qkv, int stride, int heads, int kvHeads, int hd, KvCache cache, int layer,
        int total, bool[]? mask, float scale, float softcap, float* o) : ICpuWork
    {
        [ThreadStatic]
        private static int[]? t_visible;
        [ThreadStatic]
        private static float[]? t_scores, t_weights;

        private readonly float* _keys = (float*)cache.KeyPointers[layer], _values = (float*)cache.ValuePointers[layer];
        private readonly int _keyStride = cache.KeyStride, _capacity = cache.Capacity;
        private readonly bool _bf16 = cache.IsBFloat16;

        [MethodImpl(MethodImplOptions.AggressiveOptimization)]
        public void Run(int part)
        {
            int r = part / heads, h = part % heads, g = h / (heads / kvHeads), blocks = (total + 15) / 16;
            int[] visible = Buffer(ref t_visible, total);
            float[] scores = Buffer(ref t_scores, blocks * 16), weights = Buffer(ref t_weights, total);
            fixed (float* sc = scores)
            fixed (float* pw = weights)
            fixed (int* vis = visible)
            {
                int n = 0;
                if (mask is null)
                {
                    n = total;
                }
                else
                {
                    for (int j = 0; j < total; j++)
                    {
                        if (mask[(long)r * total + j])
                        {
                            vis[n++] = j;
                        }
                    }
                }

                // Slots 0..n-1 visible (one-token steps, causal blocks): the same numbers without the index list.
                bool prefix = mask is null || n == 0 || vis[n - 1] == n - 1;
                var p = new Span<float>(pw, n);
                // Blocks of keys before the first visible one (a sliding window's past) are not scored: each score is its
                // own chain over d, whichever blocks are computed with it.
                int skip = prefix ? 0 : vis[0] / 16;
                float* qh = qkv + (long)r * stride + (long)h * hd;
                long keyAt = ((long)g * hd * _keyStride) + (skip * 16);
                if (_bf16)
                {
                    Scores<ushort, BFloat16Element>(qh, (ushort*)_keys + keyAt, _keyStride, hd, blocks - skip, sc + (skip * 16));
                }
                else
                {
                    Scores<float, F32Element>(qh, _keys + keyAt, _keyStride, hd, blocks - skip, sc + (skip * 16));
                }
                if (prefix)
                {
                    TensorPrimitives.Multiply(new ReadOnlySpan<float>(sc, n), scale, p);
                }
                else
                {
                    for (int i = 0; i < n; i++)
                    {
                        pw[i] = sc[vis[i]] * scale;
                    }
                }

                if (softcap > 0)
                {
                    // Gemma-2's soft cap on the scaled scores: c·tanh(s/c).
                    TensorPrimitives.Multiply(p, 1f / softcap, p);
                    TensorPrimitives.Tanh(p, p);
                    TensorPrimitives.Multiply(p, softcap, p);
                }

                float max = TensorPrimitives.Max(p);
                TensorPrimitives.Subtract(p, max, p);
                TensorPrimitives.Exp(p, p);
                float norm = 1f / TensorPrimitives.Sum(p);
                float* y = o + r * (long)heads * hd + (long)h * hd;
                long valueAt = (long)g * _capacity * hd;
                if (_bf16)
                {
                    WeightedSum<ushort, BFloat16Element>(pw, prefix ? null : vis, n, norm, (ushort*)_values + valueAt, hd, y);
                }
                else
                {
                    WeightedSum<float, F32Element>(pw, prefix ? null : vis, n, norm, _values + valueAt, hd, y);
                }
            }
        }

        private static T[] Buffer<T>(ref T[]? buffer, int length) =>
            buffer is { } b && b.Length >= length ? b : buffer = new T[Math.Max(length, 2 * (buffer?.Length ?? 0))];
    }

    /// <summary>How the attention loops read a cache's keys and values: 16 consecutive elements, or one, as f32.</summary>
    private interface ICacheElement<T>
        where T : unmanaged
    {
        static abstract Vector512<float> Load16(T* p);

        static abstract float Load1(T x);
    }

    /// <summary>f32 keys and values, read as they are.</summary>
    private readonly struct F32Element : ICacheElement<float>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(float* p) => Vector512.Load(p);

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Load1(float x) => x;
    }

    /// <summary>bf16 keys and values, widened to f32 exactly (zero-extended and shifted into the high half).</summary>
    private readonly struct BFloat16Element : ICacheElement<ushort>
    {
        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static Vector512<float> Load16(ushort* p) => Vector512.ShiftLeft(Vector512.WidenLower(Vector256.Load(p).ToVector512Unsafe()), 16).AsSingle();

        [MethodImpl(MethodImplOptions.AggressiveInlining)]
        public static float Load1(ushort x) => BitConverter.UInt32BitsToSingle((uint)x << 16);
    }

    /// <summary>
    /// s[j] = Σ_d q[d]·kT[d, j] for j &lt; 16·blocks, from keys stored transposed [hd, keyStride] (f32 or bf16, read as
    /// f32). Each score is one chain of fused multiply-adds over d in order, whichever block or lane computes it, so it
    /// does not depend on total.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void Scores<T, TElement>(float* q, T* kT, int keyStride, int hd, int blocks, float* s)
        where T : unmanaged
        where TElement : struct, ICacheElement<T>
    {
        if (!Vector512.IsHardwareAccelerated)
        {
            for (int j = 0; j < blocks * 16; j++)
            {
                float a = 0;
                for (int d = 0; d < hd; d++)
                {
                    a = MathF.FusedMultiplyAdd(q[d], TElement.Load1(kT[(long)d * keyStride + j]), a);
                }

                s[j] = a;
            }

            return;
        }

        int b = 0;
        for (; b + 8 <= blocks; b += 8)
        {
            T* k = kT + b * 16;
            Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default, a4 = default, a5 = default, a6 = default, a7 = default;
            for (int d = 0; d < hd; d++, k += keyStride)
            {
                var qd = Vector512.Create(q[d]);
                a0 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k), a0);
                a1 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 16), a1);
                a2 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 32), a2);
                a3 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 48), a3);
                a4 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 64), a4);
                a5 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 80), a5);
                a6 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 96), a6);
                a7 = Vector512.FusedMultiplyAdd(qd, TElement.Load16(k + 112), a7);
            }

            float* o = s + b * 16;
            a0.Store(o);
            a1.Store(o + 16);
            a2.Store(o + 32);
            a3.Store(o + 48);
            a4.Store(o + 64);
            a5.Store(o + 80);
            a6.Store(o + 96);
            a7.Store(o + 112);
        }

        for (; b < blocks; b++)
        {
            T* k = kT + b * 16;
            Vector512<float> a = default;
            for (int d = 0; d < hd; d++, k += keyStride)
            {
                a = Vector512.FusedMultiplyAdd(Vector512.Create(q[d]), TElement.Load16(k), a);
            }

            a.Store(s + b * 16);
        }
    }

    /// <summary>
    /// y = scale · Σ_i p[i]·v[slot i] over values [slots, hd] (f32 or bf16, read as f32), slot i = visible[i] (or i when
    /// <paramref name="visible"/> is null): per element one chain of fused multiply-adds in i order, whichever form
    /// addresses the slots.
    /// </summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    private static void WeightedSum<T, TElement>(float* p, int* visible, int n, float scale, T* v, int hd, float* y)
        where T : unmanaged
        where TElement : struct, ICacheElement<T>
    {
        int c = 0;
        if (Vector512.IsHardwareAccelerated)
        {
            var sv = Vector512.Create(scale);
            for (; c + 64 <= hd; c += 64)
            {
                Vector512<float> a0 = default, a1 = default, a2 = default, a3 = default;
                for (int i = 0; i < n; i++)
                {
                    var pi = Vector512.Create(p[i]);
                    T* vj = v + (long)(visible == null ? i : visible[i]) * hd + c;
                    a0 = Vector512.FusedMultiplyAdd(pi, TElement.Load16(vj), a0);
                    a1 = Vector512.FusedMultiplyAdd(pi, TElement.Load16(vj + 16), a1);
                    a2 = Vector512.FusedMultiplyAdd(pi, TElement.Load16(vj + 32), a2);
                    a3 = Vector512.FusedMultiplyAdd(pi, TElement.Load16(vj + 48), a3);
                }

                (a0 * sv).Store(y + c);
                (a1 * sv).Store(y + c + 16);
                (a2 * sv).Store(y + c + 32);
                (a3 * sv).Store(y + c + 48);
            }

            for (; c + 16 <= hd; c += 16)
            {
                Vector512<float> a = default;
                for (int i = 0; i < n; i++)
                {
                    a = Vector512.FusedMultiplyAdd(Vector512.Create(p[i]), TElement.Load16(v + (long)(visible == null ? i : visible[i]) * hd + c), a);
                }

                (a * sv).Store(y + c);
            }
        }

        for (; c < hd; c++)
        {
            float a = 0;
            for (int i = 0; i < n; i++)
            {
                a = MathF.FusedMultiplyAdd(p[i], TElement.Load1(v[(long)(visible == null ? i : visible[i]) * hd + c]), a);
            }

            y[c] = a * scale;
        }
    }

    /// <summary>Copies <paramref name="rows"/> rows [d] of the f32 table selected by <paramref name="ids"/> into y, rows
    /// <paramref name="stride"/> floats apart (0: d).</summary>
    [MethodImpl(MethodImplOptions.AggressiveOptimization)]
    public static void Gather(float* table, long tableRows, long[] ids, int rows, float* y, int d, int stride = 0)
    {
        stride = stride == 0 ? d : stride;
        for (int r = 0; r < rows; r++)
        {
            new ReadOnlySpan<float>(table + (RowId(ids, r, tableRows) * d), d).CopyTo(new Span<float>(y + (long)r * stride, d));
        }
    }

    /// <summary>The table row of output row <paramref name="r"/>: its id (the last one for rows beyond the ids), checked.</summary>
    private static long RowId(long[] ids, int r, long tableRows)
    {
        long id = ids[Math.Min(r, ids.Length - 1)];
        return (ulong)id < (ulong)tableRows
            ? id
            : throw new ArgumentOutOfRangeException(nameof(ids), id, $"Token id {id} is outside the vocabulary (0..{tableRows - 1}).");
    }

    /// <summary>Gathers rows of a 16-bit embedding table (<paramref name="tableRows"/> × d, <paramref name="format"/> bf16
    /// or f16) into f32 rows of <paramref name="y"/> (both widen exactly), as
    /// <see cref="Gather(float*, long, long[], int, float*, int, int)"/>.</summary>
    public static void Gather(ushort* table, ScalarType format, long tableRows, long[] ids, int rows, float* y, int d, int stride = 0)
    {
        if (format is not (ScalarType.BFloat16 or ScalarType.Float16))
        {
            throw new ArgumentException($"Expected a bf16 or f16 table, got {format}.", nameof(format));
        }

        stride = stride == 0 ? d : stride;
        for (int r = 0; r < rows; r++)
        {
            Widen(table + (RowId(ids, r, tableRows) * d), format, y + ((long)r * stride), d);
        }
    }

    /// <summary>n values of <paramref name="format"/> (bf16 or f16) as f32, exactly.</summary>
    public static void Widen(ushort* src, ScalarType format, float* dst, int n)
    {
        bool f16 = format == ScalarType.Float16;
        int k = 0;
        for (; k + 32 <= n; k += 32)
        {
            // Laid out as a packed block's row (value j in word j's low half, 16 + j in its high half), the 32 values widen
            // through the kernels' own code.
            (Vector512<uint> low, Vector512<uint> high) = Vector512.Widen(Vector512.Load(src + k));
            Vector512<uint> words = low | Vector512.ShiftLeft(high, 16);
            var (first, second) = f16
                ? HalfFormat.Float16.Widen(words, HalfFormat.Float16.Mask, HalfFormat.Float16.Scale)
                : HalfFormat.BFloat16.Widen(words, HalfFormat.BFloat16.Mask, default);
            first.Store(dst + k);
            second.Store(dst + k + 16);
        }

        for (; k < n; k++)
        {
            dst[k] = f16 ? (float)BitConverter.UInt16BitsToHalf(src[k]) : BitConverter.Int32BitsToSingle(src[k] << 16);
        }
    }

    /// <summary>The address of a contiguous bf16 or f16 CPU tensor's first element (read through its byte span, so at
    /// most 2 GiB).</summary>
    public static ushort* Pointer16(Tensor t)
    {
        if (t.dtype is not (ScalarType.BFloat16 or ScalarType.Float16) || t.device_type != DeviceType.CPU || !t.is_contiguous() || t.numel() * 2 > int.MaxValue)
        {
            throw new ArgumentException($"Expected a contiguous bf16 or f16 CPU tensor of at most 2 GiB, got {t.dtype} on {t.device} (contiguous: {t.is_contiguous()}).", nameof(t));
        }

        return (ushort*)Unsafe.AsPointer(ref System.Runtime.InteropServices.MemoryMarshal.GetReference(t.bytes));
    }

    /// <summary>Copies n floats.</summary>
    public static void Copy(float* from, float* to, long n) => Buffer.MemoryCopy(from, to, n * sizeof(float), n * sizeof(float));
}
