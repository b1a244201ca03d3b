namespace Coral.AI.Training;

/// <summary>Pre-tokenizer styles of byte-level BPE tokenizers.</summary>
public enum ByteLevelStyle
{
    /// <summary>GPT-2: ByteLevel pre-tokenizer with its own regex, no BOS.</summary>
    Gpt2,

    /// <summary>Llama-3: Split(regex) + ByteLevel, BOS added by a TemplateProcessing post-processor.</summary>
    Llama3,

    /// <summary>Qwen2: Split(regex) + ByteLevel, NFC normalizer, no BOS.</summary>
    Qwen2,
}
