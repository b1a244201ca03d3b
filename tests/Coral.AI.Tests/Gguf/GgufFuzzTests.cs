using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>
/// Corrupt GGUF files — random bytes overwritten in the header, metadata and tensor table, or the file cut at random
/// lengths — either still load or fail with a <see cref="CoralModelException"/> naming the file: never another exception,
/// a hang or an allocation the file cannot back.
/// </summary>
public class GgufFuzzTests
{
    [Theory]
    [InlineData("qwen2", "q8_0")]          // byte-level BPE, Q8_0 blocks
    [InlineData("sentencepiece", "f32")]   // SentencePiece pieces and scores
    [InlineData("qwen3moe-bf16", "bf16")]  // stacked experts
    public void CorruptFiles_LoadOrFailWithACoralModelException(string model, string type)
    {
        string dir = ModelZoo.TempFolder("gguf-fuzz");
        string source = Path.Combine(dir, "source.gguf");
        GgufExporter.Export(TransformerModelTests.ModelFor(model), source, type);
        byte[] bytes = File.ReadAllBytes(source);
        int dataStart;
        using (var file = GgufFile.Open(source))
        {
            dataStart = (int)file.Tensors.Values.Min(t => t.Offset);
        }

        var random = new Random(1234);
        var failures = new List<string>();
        int loaded = 0, refused = 0;
        for (int trial = 0; trial < 150; trial++)
        {
            byte[] corrupt;
            string what;
            if (trial % 3 == 2)
            {
                int cut = random.Next(24, bytes.Length);
                corrupt = bytes[..cut];
                what = $"cut at {cut}";
            }
            else
            {
                corrupt = (byte[])bytes.Clone();
                int edits = 1 + random.Next(4);
                var at = new List<int>();
                for (int e = 0; e < edits; e++)
                {
                    // Mostly the metadata and tensor table (where lengths, counts, types and offsets live).
                    int i = random.Next(4, dataStart);
                    corrupt[i] = random.Next(3) switch { 0 => 0xFF, 1 => 0x00, _ => (byte)random.Next(256) };
                    at.Add(i);
                }

                what = $"bytes at {string.Join(", ", at)}";
            }

            string path = Path.Combine(dir, $"corrupt-{trial}.gguf");
            File.WriteAllBytes(path, corrupt);
            try
            {
                using InferenceEngine engine = InferenceEngine.Load(path, torch.CPU, ScalarType.Float32, 32);
                loaded++;
            }
            catch (CoralModelException ex) when (ex.Message.Contains(path, StringComparison.Ordinal) || ex.Message.Contains(dir, StringComparison.Ordinal))
            {
                refused++;
            }
            catch (Exception ex)
            {
                failures.Add($"{what}: {ex.GetType().Name}: {ex.Message.Split('\n')[0]}");
            }
            finally
            {
                File.Delete(path);
            }
        }

        Assert.True(failures.Count == 0, $"{failures.Count} of 150 corrupt files failed otherwise ({loaded} loaded, {refused} refused):\n" + string.Join("\n", failures.Take(15)));
        Assert.True(refused > 50, $"only {refused} refused");
    }
}
