using Microsoft.Extensions.Options;

namespace Coral.AI;

/// <summary>Validates <see cref="CoralChatClientOptions"/> at start, with messages that name the option.</summary>
internal sealed class CoralChatClientOptionsValidator : IValidateOptions<CoralChatClientOptions>
{
    public ValidateOptionsResult Validate(string? name, CoralChatClientOptions options) =>
        Check(options) is string error ? ValidateOptionsResult.Fail(error) : ValidateOptionsResult.Success;

    internal static string? Check(CoralChatClientOptions o)
    {
        if (string.IsNullOrWhiteSpace(o.ModelPath))
        {
            return "CoralChatClientOptions.ModelPath is required (a Hugging Face model folder with config.json, or a .gguf file).";
        }

        if (OllamaStore.IsName(o.ModelPath))
        {
            try
            {
                _ = OllamaStore.Resolve(o.ModelPath);   // pulled? (its GGUF is checked as it is imported)
            }
            catch (CoralModelException e)
            {
                return $"CoralChatClientOptions.ModelPath '{o.ModelPath}': {e.Message}";
            }
        }
        else if (GgufImporter.IsGguf(o.ModelPath))
        {
            // A GGUF file: its metadata and tensors are checked as it is imported (errors name the key or tensor).
        }
        else if (!Directory.Exists(o.ModelPath))
        {
            return $"CoralChatClientOptions.ModelPath '{o.ModelPath}' does not exist.";
        }
        else if (!File.Exists(Path.Combine(o.ModelPath, "config.json")))
        {
            return $"CoralChatClientOptions.ModelPath '{o.ModelPath}' has no config.json.";
        }
        else if (!File.Exists(Path.Combine(o.ModelPath, "tokenizer.json")))
        {
            return $"CoralChatClientOptions.ModelPath '{o.ModelPath}' has no tokenizer.json.";
        }

        if (o.DraftModelPath is not null && !Directory.Exists(o.DraftModelPath))
        {
            return $"CoralChatClientOptions.DraftModelPath '{o.DraftModelPath}' does not exist.";
        }

        if (!TorchDevices.IsValidDevice(o.Device))
        {
            return $"CoralChatClientOptions.Device '{o.Device}' is not valid; use cpu, cuda or cuda:N.";
        }

        if (!TorchDevices.TryParseDType(o.DType, out var dtype))
        {
            return $"CoralChatClientOptions.DType '{o.DType}' is not valid; use float32, bfloat16 or float16 (or leave it unset).";
        }

        if (dtype == TorchSharp.torch.ScalarType.Float16 && o.Device == "cpu")
        {
            return "CoralChatClientOptions.DType float16 is not supported on CPU; use bfloat16 or float32.";
        }

        if (!TorchDevices.TryParseQuantization(o.Quantization, out var quantization))
        {
            return $"CoralChatClientOptions.Quantization '{o.Quantization}' is not valid; use q8_0 or q4_0 (or leave it unset).";
        }

        if (quantization != WeightQuantization.None && o.Device != "cpu")
        {
            return $"CoralChatClientOptions.Quantization {o.Quantization} runs on the CPU kernels; on {o.Device} leave it unset.";
        }

        if (quantization != WeightQuantization.None && dtype is not (null or TorchSharp.torch.ScalarType.Float32))
        {
            return $"CoralChatClientOptions.Quantization {o.Quantization} computes in float32; leave CoralChatClientOptions.DType unset or float32.";
        }

        if (!TorchDevices.TryParseKvCacheType(o.KvCacheType, out var kvType))
        {
            return $"CoralChatClientOptions.KvCacheType '{o.KvCacheType}' is not valid; use f32 or bf16 (or leave it unset).";
        }

        if (kvType == TorchSharp.torch.ScalarType.BFloat16 && o.Device == "cpu" && dtype is not (null or TorchSharp.torch.ScalarType.Float32))
        {
            return $"CoralChatClientOptions.KvCacheType {o.KvCacheType} on CPU is for the CPU kernels: leave CoralChatClientOptions.DType unset or float32 (or use a GPU).";
        }

        if (o.ContextLength < 16)
        {
            return $"CoralChatClientOptions.ContextLength must be at least 16 (got {o.ContextLength}).";
        }

        if (o.ParallelRequests is < 1 or > 64)
        {
            return $"CoralChatClientOptions.ParallelRequests must be in [1, 64] (got {o.ParallelRequests}).";
        }

        if (o.DefaultMaxOutputTokens < 1)
        {
            return $"CoralChatClientOptions.DefaultMaxOutputTokens must be at least 1 (got {o.DefaultMaxOutputTokens}).";
        }

        if (o.DefaultTemperature is { } t && !(t >= 0 && float.IsFinite(t)) || o.DefaultTopP is { } p && !(p > 0 && p <= 1) || o.DefaultTopK < 0)
        {
            return "CoralChatClientOptions.DefaultTemperature must be a finite number >= 0, DefaultTopP in (0, 1] and DefaultTopK >= 0.";
        }

        if (o.DraftModelPath is not null && !File.Exists(Path.Combine(o.DraftModelPath, "config.json")))
        {
            return $"CoralChatClientOptions.DraftModelPath '{o.DraftModelPath}' has no config.json.";
        }

        if (o.TreeDepth is < 1 or > 16)
        {
            return $"CoralChatClientOptions.TreeDepth must be in [1, 16] (got {o.TreeDepth}).";
        }

        if (o.TreeTopK is < 1 or > 32)
        {
            return $"CoralChatClientOptions.TreeTopK must be in [1, 32] (got {o.TreeTopK}).";
        }

        if (o.TreeTotalTokens is < 2 or > 256)
        {
            return $"CoralChatClientOptions.TreeTotalTokens must be in [2, 256] or unset for auto-tuning (got {o.TreeTotalTokens}).";
        }

        if (o.PromptLookupTokens is < 0 or > 32)
        {
            return $"CoralChatClientOptions.PromptLookupTokens must be in [0, 32] (0 = off; got {o.PromptLookupTokens}).";
        }

        if (o.RouterTopK is < 0)
        {
            return $"CoralChatClientOptions.RouterTopK must be >= 0 (0 = the full LM head) or unset (got {o.RouterTopK}).";
        }

        if (o.PrefillChunkSize < 1 || o.Threads is < 1)
        {
            return "CoralChatClientOptions.PrefillChunkSize and Threads must be at least 1.";
        }

        return null;
    }
}
