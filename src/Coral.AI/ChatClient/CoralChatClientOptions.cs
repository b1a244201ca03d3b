namespace Coral.AI;

/// <summary>Options of a <see cref="CoralChatClient"/> and of the model host behind it.</summary>
/// <remarks>Bind from configuration (section <c>Coral</c>): <c>Coral__ModelPath</c>, <c>Coral__Device</c>, ...</remarks>
public sealed class CoralChatClientOptions
{
    /// <summary>Gets or sets the Hugging Face model folder (config.json, model.safetensors[.index.json], tokenizer.json), or
    /// a GGUF file (llama.cpp's, Ollama's: llama (Mixtral too), qwen2, qwen3, qwen2moe, qwen3moe, olmoe, phi3, gemma 1–3, granite, smollm3, olmo2, command-r and cohere2 architectures with a byte-level BPE or SentencePiece tokenizer; F32, F16,
    /// BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_NL and IQ4_XS tensors). A GGUF file's quantized layers load as Q8_0 blocks
    /// with its Q4_K projections kept as they are, unless <see cref="Quantization"/> says otherwise (Q4_0 files as
    /// Q4_0: their values exactly; Q8_0 files exactly);
    /// or a model an Ollama installation has pulled, <c>ollama:llama3.2</c> (<c>ollama:&lt;model&gt;[:&lt;tag&gt;]</c>: its GGUF
    /// blob in <c>$OLLAMA_MODELS</c> or <c>~/.ollama/models</c>).</summary>
    public string? ModelPath { get; set; }

    /// <summary>
    /// Gets or sets the drafter folder for speculative decoding (an EAGLE, HASS or CORAL checkpoint trained for this model),
    /// or <see langword="null"/> for plain decoding. Output is identical in distribution (greedy: token for token).
    /// </summary>
    public string? DraftModelPath { get; set; }

    /// <summary>Gets or sets the number of draft levels per cycle (EAGLE-2 depth). Defaults to 5.</summary>
    public int TreeDepth { get; set; } = 5;

    /// <summary>Gets or sets the candidates per expanded node and nodes kept per level (EAGLE-2 top-k). Defaults to 8.</summary>
    public int TreeTopK { get; set; } = 8;

    /// <summary>
    /// Gets or sets the nodes verified per cycle, root included; <see langword="null"/> auto-tunes it at load by timing the
    /// target's verify forward against tree size on this device.
    /// </summary>
    public int? TreeTotalTokens { get; set; }

    /// <summary>
    /// Gets or sets a value indicating whether each speculation cycle's draft depth follows the acceptance observed so far
    /// (up to <see cref="TreeDepth"/>), so that drafting stops paying for levels the target rarely accepts. Defaults to
    /// <see langword="true"/>; output is unaffected either way.
    /// </summary>
    public bool AdaptiveTreeDepth { get; set; } = true;

    /// <summary>
    /// Gets or sets the LM-head groups a CORAL router computes per draft step; 0 disables the router (full head);
    /// <see langword="null"/> uses the checkpoint's default on CPU and the full head on a GPU (where routing saves nothing).
    /// </summary>
    public int? RouterTopK { get; set; }

    /// <summary>
    /// Gets or sets how many tokens a prompt-lookup proposal has: where the sequence's last 1–3 tokens occurred before,
    /// the tokens that followed them are verified as a chain without a draft forward (text that copies its prompt or
    /// repeats itself), when the measured acceptance says it beats the drafter or a plain step. Without a drafter it
    /// runs on packed (bf16-stored, CPU) weights, whose verified rows equal one-token steps bit for bit.
    /// 0 turns it off; output is unaffected either way. Per request: AdditionalProperties <c>prompt_lookup_tokens</c>.
    /// Defaults to 3 (a chain of 4 rows, which a greedy verification still decides through the screened LM head; on the
    /// demo pair at T = 0 it measured 1.06–1.28× plain decoding against 0.93–0.97× without it).
    /// </summary>
    public int PromptLookupTokens { get; set; } = 3;

    /// <summary>Gets or sets the model id reported in responses; defaults to the model folder's name.</summary>
    public string? ModelId { get; set; }

    /// <summary>Gets or sets the device: <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>. Defaults to <c>cpu</c>.</summary>
    public string Device { get; set; } = "cpu";

    /// <summary>
    /// Gets or sets the compute dtype of the weights: <c>float32</c>, <c>bfloat16</c> or <c>float16</c>; <see langword="null"/>
    /// picks the best for the device: float32 on CPU (faster for one-token steps; with a drafter the LM head is kept in
    /// bfloat16, which keeps tree verification bit-exact and makes a 16-row head cost what one row costs), bfloat16 on
    /// CUDA. float16 is refused on CPU, where its matmul is a slow reference kernel.
    /// </summary>
    public string? DType { get; set; }

    /// <summary>
    /// Gets or sets how the decoder's weights are stored: <see langword="null"/> or <c>none</c> keeps the checkpoint's
    /// values; <c>q8_0</c> quantizes the attention and MLP projections (experts included) at load to llama.cpp's Q8_0
    /// blocks — int8 levels with an f16 scale per 32 inputs — read at 56% of bf16's bytes, so a memory-bound CPU decodes
    /// faster and a model takes about half the memory (the embedding, the LM head and the norms keep their values);
    /// <c>q4_0</c> the same with 4-bit levels (llama.cpp's Q4_0): 31% of bf16's bytes, at a visible cost in accuracy. CPU
    /// only, with float32 compute (<see cref="DType"/> unset or float32); speculative decoding stays exact against the
    /// quantized model. On a CPU with AVX-VNNI the quantized layers round their inputs to int8 blocks too and multiply
    /// bytes by bytes — llama.cpp's arithmetic, 1.15–2× faster from 4–8 rows up (batches, verified trees, prompts) and
    /// as fast at one row;
    /// <c>CORAL_INT8_ACTIVATIONS=0</c> keeps f32 inputs.
    /// </summary>
    public string? Quantization { get; set; }

    /// <summary>
    /// Gets or sets what the KV cache stores: <c>f32</c> (the default) or <c>bf16</c> — half the memory (a Llama-3-8B
    /// shape's 32,768-token cache: 4 GiB instead of 8) and less to read per step at long contexts; keys and values are
    /// rounded to bf16 as they are written, so logits move slightly from the f32 cache's, while speculative decoding stays
    /// exact against plain decoding with the same cache. On CPU it needs the kernels (<see cref="DType"/> unset or float32);
    /// on a GPU attention then runs in bf16 (SDPA's bf16 kernels).
    /// </summary>
    public string? KvCacheType { get; set; }

    /// <summary>Gets or sets the context length (prompt + output) the KV cache is allocated for. Defaults to 4096, capped by the model.</summary>
    public int ContextLength { get; set; } = 4096;

    /// <summary>Gets or sets the output cap used when <c>ChatOptions.MaxOutputTokens</c> is not set.</summary>
    public int DefaultMaxOutputTokens { get; set; } = 1024;

    /// <summary>Gets or sets the temperature used when <c>ChatOptions.Temperature</c> is not set. Null (the default): the
    /// model's own recommendation — its generation_config.json when that samples (<c>do_sample</c>; temperature, else 1,
    /// as transformers), or an Ollama model's params — else 0.7 (sampling by default, as ME.AI expects).</summary>
    public float? DefaultTemperature { get; set; }

    /// <summary>Gets or sets the top-p used when <c>ChatOptions.TopP</c> is not set. Null (the default): the model's own
    /// (generation_config.json's top_p, else 1, when it samples; an Ollama model's top_p), else 0.95.</summary>
    public float? DefaultTopP { get; set; }

    /// <summary>Gets or sets the top-k used when <c>ChatOptions.TopK</c> is not set. Null (the default): the model's own
    /// (generation_config.json's top_k, else transformers' 50, when it samples; an Ollama model's top_k), else none.</summary>
    public int? DefaultTopK { get; set; }

    /// <summary>Gets or sets how many prompt tokens one prefill forward processes.</summary>
    public int PrefillChunkSize { get; set; } = 256;

    /// <summary>Gets or sets the CPU threads inference uses: libtorch's, and those of the packed CPU kernels (the calling
    /// thread and its helpers; f32 on CPU with bf16-valued weights, as the demo pair). A model on the packed kernels sets
    /// libtorch to one thread, whose OpenMP workers would contend with the helpers. <see langword="null"/> keeps libtorch's
    /// default and gives the kernels the processors, at most 8 (or <c>CORAL_CPU_THREADS</c>).</summary>
    public int? Threads { get; set; }

    /// <summary>
    /// Gets or sets how many requests decode at the same time. 1 (the default) runs requests one after another, each with
    /// speculative decoding when a drafter is set. N &gt; 1 gives N KV-cache slots and continuous batching: concurrent
    /// requests share every forward (one row each, plus prompt chunks of new arrivals), which a memory-bound model runs
    /// for little more than one row's cost, so a server's throughput grows with its load. Batched requests decode with
    /// plain steps (no draft tree) and, on the packed CPU kernels (bf16- or f16-stored weights, or <see cref="Quantization"/>),
    /// get exactly the tokens they would get alone. Each slot allocates a cache of <see cref="ContextLength"/>.
    /// </summary>
    public int ParallelRequests { get; set; } = 1;

    /// <summary>A copy of every option: all are strings or values, so a member-wise copy shares nothing mutable (a list
    /// or object option added later must be copied here by hand).</summary>
    internal CoralChatClientOptions Clone() => (CoralChatClientOptions)MemberwiseClone();
}
