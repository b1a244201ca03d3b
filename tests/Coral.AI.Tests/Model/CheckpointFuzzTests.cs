using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Corrupt model folders — random bytes overwritten in model.safetensors' header, config.json, tokenizer.json,
/// tokenizer_config.json or a drafter's files, or a file cut short — either still load or fail with a
/// <see cref="CoralModelException"/> naming the folder: never another exception type.
/// </summary>
public class CheckpointFuzzTests
{
    [Theory]
    [InlineData("model.safetensors")]
    [InlineData("config.json")]
    [InlineData("tokenizer.json")]
    [InlineData("tokenizer_config.json")]
    public void CorruptFile_LoadsOrFailsWithACoralModelException(string name) =>
        Fuzz(TransformerModelTests.ModelFor("qwen2"), name, trials: 100, new Random(name.Length),
            folder => InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 32).Dispose());

    /// <summary>The same for a CORAL drafter's files (its config, its layer, its router).</summary>
    [Theory]
    [InlineData("config.json")]
    [InlineData("model.safetensors")]
    [InlineData("router.safetensors")]
    public void CorruptDrafterFile_LoadsOrFailsWithACoralModelException(string name)
    {
        string target = TransformerModelTests.ModelFor("qwen2");
        string drafter = DrafterZoo.Random(target, "fuzz-source", new DraftInitOptions { Seed = 3, RouterGroups = 4, RouterTopK = 2 });
        Fuzz(drafter, name, trials: 60, new Random(name.Length * 7),
            folder => InferenceEngine.Load(target, torch.CPU, ScalarType.Float32, 32, draftFolder: folder).Dispose());
    }

    /// <summary>Loads <paramref name="trials"/> copies of <paramref name="source"/> with <paramref name="name"/> corrupt:
    /// a JSON-ish byte written somewhere in the file (in a safetensors file, its header), or every fourth time the file
    /// cut there.</summary>
    private static void Fuzz(string source, string name, int trials, Random random, Action<string> load)
    {
        byte[] bytes = File.ReadAllBytes(Path.Combine(source, name));
        // safetensors: the 8-byte length and the JSON header (the data after it is any bytes at all).
        int span = name.EndsWith(".safetensors", StringComparison.Ordinal) ? 8 + (int)BitConverter.ToUInt64(bytes, 0) : bytes.Length;
        var failures = new List<string>();
        int refused = 0;
        for (int trial = 0; trial < trials; trial++)
        {
            string folder = ModelZoo.Copy(source, "fuzz-" + Path.GetFileNameWithoutExtension(name));
            byte[] corrupt;
            string what;
            if (trial % 4 == 3)
            {
                int cut = random.Next(0, span);
                corrupt = bytes[..cut];
                what = $"cut at {cut}";
            }
            else
            {
                const string Bytes = "{}[]\":,0x\\\u00ff";
                corrupt = (byte[])bytes.Clone();
                int i = random.Next(0, span);
                corrupt[i] = (byte)Bytes[random.Next(Bytes.Length)];
                what = $"byte {i} = {corrupt[i]:X2}";
            }

            File.WriteAllBytes(Path.Combine(folder, name), corrupt);
            try
            {
                load(folder);
            }
            catch (CoralModelException ex) when (ex.Message.Contains(folder, StringComparison.Ordinal))
            {
                refused++;
            }
            catch (Exception ex)
            {
                failures.Add($"{what}: {ex.GetType().Name}: {ex.Message.Split('\n')[0]}");
            }
        }

        Assert.True(failures.Count == 0, $"{name}: {failures.Count} of {trials} corrupt copies failed otherwise ({refused} refused):\n" + string.Join("\n", failures.Take(12)));
        Assert.True(refused > 10, $"only {refused} refused");
    }
}
