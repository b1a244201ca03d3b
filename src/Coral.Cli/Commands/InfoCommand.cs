using Coral.AI;

namespace Coral.Cli;

/// <summary>
/// <c>coral info --model &lt;dir&gt;</c>: what the loader reads from a checkpoint folder without loading its weights — the
/// architecture and the parts of it the forward applies (layer kinds, norms, RoPE, multipliers, caps), the stored weights,
/// the tokenizer, the chat template and its tool-call syntax. A checkpoint the engine cannot run fails here with the same
/// error naming the file and field. Without <c>--model</c>: the machine (<see cref="MachineReport"/>).
/// </summary>
internal static class InfoCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--model" }, new HashSet<string>());
        if (cl.Value("--model") is null)
        {
            // No model: what this machine offers the engine (for bug reports).
            foreach (var (label, value) in MachineReport.Lines())
            {
                stdout.WriteLine($"{label,-13} {value}");
            }

            return 0;
        }

        string folder = GgufImporter.Resolve(cl.Required("--model"));   // a GGUF file or Ollama name: what its import reads
        ModelConfig c = ModelConfig.Load(Path.Combine(folder, "config.json"));
        stdout.WriteLine($"architecture  {c.Architecture} ({c.Family})");
        stdout.WriteLine($"shape         {c.NumLayers} layers, d {c.HiddenSize}, {c.NumHeads} heads / {c.NumKvHeads} KV heads of {c.HeadDim}, ffn {c.IntermediateSize}, "
            + $"vocab {c.VocabSize}{(c.TieWordEmbeddings ? ", tied head" : string.Empty)}");
        stdout.WriteLine($"layers        {Kinds(c)}");
        stdout.WriteLine($"rope          θ {c.RopeTheta:G}{(c.RopeScaling is { } s ? $", {s.Kind} ×{s.Factor:G}" : string.Empty)}"
            + (c.LocalRopeTheta is double local ? $"; sliding layers θ {local:G}, unscaled" : string.Empty)
            + (c.RotaryDim != c.HeadDim ? $"; {c.RotaryDim} of {c.HeadDim} dimensions rotated" : string.Empty)
            + (c.InterleavedRope ? "; adjacent pairs" : string.Empty)
            + $"; {c.MaxPositionEmbeddings} positions");
        var parts = new List<string>
        {
            $"{c.NormPlacement} {(c.LayerNorms ? "LayerNorms" : "norms")}", c.Activation == MlpActivation.GeluTanh ? "GeGLU (tanh)" : "SwiGLU",
        };
        if (c.ParallelBlock)
        {
            parts.Add("attention and MLP in parallel");
        }

        if (c.QkNorm)
        {
            parts.Add(c.QkNormWholeProjection ? "q/k norms over whole projections" : "per-head q/k norms");
        }

        if (c.NumExperts > 0)
        {
            int dense = Enumerable.Range(0, c.NumLayers).Count(l => !c.IsMoe(l));
            parts.Add($"{c.NumExperts} experts of {c.ExpertIntermediateSize}, {c.ExpertsPerToken} per token{(c.NormalizeTopK ? " (renormalised)" : string.Empty)}"
                + (dense > 0 ? $", {dense} dense layers" : string.Empty));
        }

        if (c.NormWeightsOffsetByOne)
        {
            parts.Add("norm weights stored as 1 + w");
        }

        if (c.EmbeddingScale != 1f)
        {
            parts.Add($"embedding ×{c.EmbeddingScale:G}");
        }

        if (Math.Abs(c.AttentionScale - (1.0 / Math.Sqrt(c.HeadDim))) > 1e-12)
        {
            parts.Add($"q·k ×{c.AttentionScale:G6}");
        }

        if (c.ResidualScale != 1f)
        {
            parts.Add($"residual branches ×{c.ResidualScale:G}");
        }

        if (c.LogitDivisor != 1f)
        {
            parts.Add($"logits ÷{c.LogitDivisor:G}");
        }

        if (c.AttentionSoftcap is double attention)
        {
            parts.Add($"attention cap {attention:G}");
        }

        if (c.FinalLogitSoftcap is double final)
        {
            parts.Add($"logit cap {final:G}");
        }

        stdout.WriteLine($"forward       {string.Join(", ", parts)}");

        using (var reader = new CheckpointReader(folder))
        {
            string root = reader.DecoderRoot;
            var read = reader.Names.Where(n => n.StartsWith(root, StringComparison.Ordinal) || n == reader.HeadName).ToList();
            long parameters = read.Sum(n => reader.ShapeOf(n).Aggregate(1L, (a, b) => a * b));
            string dtypes = string.Join(", ", read.GroupBy(reader.StoredType).Select(g => $"{g.Count()} {g.Key}"));
            int other = reader.Names.Count() - read.Count;
            stdout.WriteLine($"weights       {parameters / 1e9:F2} B parameters under '{root}' ({dtypes} tensors)"
                + (other > 0 ? $"; {other} other tensors not read" : string.Empty));
        }

        HfTokenizer tokenizer = HfTokenizer.Load(folder);
        stdout.WriteLine($"tokenizer     {(tokenizer.IsByteLevel ? "byte-level BPE" : "SentencePiece BPE")}, {tokenizer.VocabSize} tokens, "
            + $"BOS {tokenizer.BosTokenId?.ToString() ?? "none"}, EOS {string.Join(" ", tokenizer.Config.GenerationEosTokenIds.Concat(c.EosTokenIds).Distinct())}");
        string? template = tokenizer.Config.ChatTemplate;
        stdout.WriteLine(template is null
            ? "chat template none in the folder: chat requests are rendered as ChatML"
            : $"chat template {template.Length} characters; tool calls: {AssistantOutputParser.Detect(template)}");
        return 0;
    }

    /// <summary>The layers in order as runs of one kind: global, sliding (window) or without RoPE.</summary>
    private static string Kinds(ModelConfig c)
    {
        string Kind(int l) => !c.UsesRope(l) ? "no-RoPE" : c.IsSliding(l) ? $"sliding {c.SlidingWindow}" : "global";
        var runs = new List<(string Kind, int Count)>();
        for (int l = 0; l < c.NumLayers; l++)
        {
            string k = Kind(l);
            if (runs.Count > 0 && runs[^1].Kind == k)
            {
                runs[^1] = (k, runs[^1].Count + 1);
            }
            else
            {
                runs.Add((k, 1));
            }
        }

        return runs.Count == 1 ? $"all {runs[0].Kind}" : string.Join(", ", runs.Select(r => $"{r.Count} {r.Kind}"));
    }
}
