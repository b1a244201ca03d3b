using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI;

/// <summary>Turns the <c>Device</c> and <c>DType</c> option strings into torch values, failing fast with clear messages.</summary>
internal static class TorchDevices
{
    public const string CudaBackendHint =
        "CUDA was requested but this process has no CUDA-enabled libtorch. Reference the TorchSharp-cuda-linux (or " +
        "TorchSharp-cuda-windows) package instead of libtorch-cpu-linux-x64 — in this repository build with " +
        "-p:CoralTorchBackend=cuda, or with -p:CoralTorchBackend=external and a CUDA libtorch (e.g. PyTorch's torch/lib) " +
        "on LD_LIBRARY_PATH — and check that an NVIDIA driver is present.";

    public static bool IsValidDevice(string? device) =>
        device is not null && (device == "cpu" || device == "cuda" || (device.StartsWith("cuda:", StringComparison.Ordinal) && int.TryParse(device.AsSpan(5), out int n) && n >= 0));

    public static Device Resolve(string device)
    {
        if (!IsValidDevice(device))
        {
            throw new ArgumentException($"Device '{device}' is not valid; use cpu, cuda or cuda:N.", nameof(device));
        }

        if (device == "cpu")
        {
            return torch.CPU;
        }

        if (!torch.cuda.is_available())
        {
            throw new InvalidOperationException(CudaBackendHint);
        }

        int index = device == "cuda" ? 0 : int.Parse(device.AsSpan(5), System.Globalization.CultureInfo.InvariantCulture);
        if (index >= torch.cuda.device_count())
        {
            throw new InvalidOperationException($"Device '{device}' does not exist: {torch.cuda.device_count()} CUDA device(s) are visible.");
        }

        return torch.device(DeviceType.CUDA, index);
    }

    public static bool TryParseDType(string? name, out ScalarType? dtype)
    {
        dtype = name?.ToLowerInvariant() switch
        {
            null or "" or "auto" => null,
            "float32" or "f32" or "fp32" => ScalarType.Float32,
            "bfloat16" or "bf16" => ScalarType.BFloat16,
            "float16" or "f16" or "fp16" or "half" => ScalarType.Float16,
            _ => (ScalarType?)(ScalarType)(-1),
        };
        return dtype is null || (int)dtype.Value >= 0;
    }

    /// <summary>Parses a KV cache type name: f32 (default; also float32) or bf16 (bfloat16).</summary>
    public static bool TryParseKvCacheType(string? name, out ScalarType type)
    {
        (bool ok, type) = name?.ToLowerInvariant() switch
        {
            null or "" or "f32" or "float32" => (true, ScalarType.Float32),
            "bf16" or "bfloat16" => (true, ScalarType.BFloat16),
            _ => (false, ScalarType.Float32),
        };
        return ok;
    }

    /// <summary>Parses a weight quantization name: null, empty or <c>none</c>, <c>q8_0</c> or <c>q4_0</c> (case-insensitive).</summary>
    public static bool TryParseQuantization(string? name, out WeightQuantization quantization)
    {
        (bool ok, quantization) = name?.ToLowerInvariant() switch
        {
            null or "" or "none" => (true, WeightQuantization.None),
            "q8_0" or "q8" => (true, WeightQuantization.Q8_0),
            "q4_0" or "q4" => (true, WeightQuantization.Q4_0),
            _ => (false, WeightQuantization.None),
        };
        return ok;
    }

    /// <summary>
    /// Picks the compute dtype of the layers: the requested one; else float32 on CPU (bf16 and f16 checkpoints run there on
    /// the packed kernels with f32 arithmetic), with or without a drafter: one-token steps run faster in f32 (oneDNN's
    /// bf16 GEMV is slow at batch 1), and 16-row verification costs about the same in both (measured,
    /// docs/benchmarks.md); with a drafter the LM head is bf16 (<see cref="ResolveHeadType"/>). On CUDA the checkpoint's
    /// own 16-bit dtype (<paramref name="stored"/>, config.json's <c>torch_dtype</c>: an f16 checkpoint such as Llama-2 or
    /// Vicuna is not rounded to bf16), else bfloat16. float16 is refused on CPU.
    /// </summary>
    public static ScalarType ResolveDType(string? name, Device device, ScalarType? stored = null)
    {
        if (!TryParseDType(name, out ScalarType? requested))
        {
            throw new ArgumentException($"DType '{name}' is not valid; use float32, bfloat16 or float16.", nameof(name));
        }

        ScalarType dtype = requested ?? (device.type == DeviceType.CPU ? ScalarType.Float32
            : stored is ScalarType.Float16 or ScalarType.BFloat16 ? stored.Value : ScalarType.BFloat16);
        if (dtype == ScalarType.Float16 && device.type == DeviceType.CPU)
        {
            throw new ArgumentException("float16 compute is not supported on CPU (its matmul is a slow reference kernel); use bfloat16 or float32.", nameof(name));
        }

        return dtype;
    }

    /// <summary>
    /// Picks the LM head's dtype when it differs from the layers': bfloat16 under float32 layers with a drafter on CPU.
    /// Tree verification must give each node the bits a one-token step gives; f32 layer GEMMs do that once rows are
    /// padded to whole blocks (<see cref="TransformerModel.Forward"/>), but the f32 head, kept [V, d], does not at
    /// several row counts, while the bf16 head does at all of them and costs at 16 rows what one row costs (AMX).
    /// </summary>
    public static ScalarType? ResolveHeadType(ScalarType layers, Device device, bool speculative) =>
        speculative && device.type == DeviceType.CPU && layers == ScalarType.Float32 ? ScalarType.BFloat16 : null;

    /// <summary>
    /// Sets libtorch to one thread when <paramref name="model"/> runs on the packed CPU kernels, which split their work
    /// with helper threads of their own (<see cref="CpuParallel"/>): libtorch's OpenMP workers spin for milliseconds
    /// after each parallel op and would hold the helpers' cores, while what stays in libtorch beside such a model
    /// (sampling, small drafter ops) is small. Returns whether it changed the setting.
    /// </summary>
    public static bool YieldTorchThreads(TransformerModel model)
    {
        if (!model.UsesPackedWeights || !CpuParallel.Enabled || torch.get_num_threads() == 1)
        {
            return false;
        }

        torch.set_num_threads(1);
        return true;
    }
}
