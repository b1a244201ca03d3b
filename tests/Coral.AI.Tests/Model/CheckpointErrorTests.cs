using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

/// <summary>Bad model folders fail with a <see cref="CoralModelException"/> that names the file and field.</summary>
public class CheckpointErrorTests
{
    private static string Corrupt(string name, Action<string> corrupt)
    {
        string folder = ModelZoo.Copy(TransformerModelTests.ModelFor("llama"), name);
        corrupt(folder);
        return folder;
    }

    private static CoralModelException LoadFails(string folder)
    {
        var ex = Assert.Throws<CoralModelException>(() => TransformerModel.Load(folder, torch.CPU, ScalarType.Float32, 64).Dispose());
        return ex;
    }

    [Fact]
    public void TruncatedWeights_NameTheFileAndTensor()
    {
        string folder = Corrupt("truncated", f =>
        {
            string path = Path.Combine(f, "model.safetensors");
            using var fs = new FileStream(path, FileMode.Open);
            fs.SetLength(fs.Length - 100);
        });
        var ex = LoadFails(folder);
        Assert.EndsWith("model.safetensors", ex.FilePath);
        Assert.NotNull(ex.Field);
        Assert.Contains("out of range", ex.Message);
    }

    [Fact]
    public void HeaderLengthBeyondFile_IsReported()
    {
        string folder = Corrupt("header-length", f =>
        {
            string path = Path.Combine(f, "model.safetensors");
            byte[] b = File.ReadAllBytes(path);
            BitConverter.GetBytes((long)b.Length * 4).CopyTo(b, 0);
            File.WriteAllBytes(path, b);
        });
        Assert.Contains("corrupt header length", LoadFails(folder).Message);
    }

    [Fact]
    public void HeaderNotJson_IsReported()
    {
        string folder = Corrupt("header-json", f =>
        {
            string path = Path.Combine(f, "model.safetensors");
            byte[] b = File.ReadAllBytes(path);
            b[8] = (byte)'#';
            File.WriteAllBytes(path, b);
        });
        Assert.Contains("not valid JSON", LoadFails(folder).Message);
    }

    [Fact]
    public void TinyFile_IsReported()
    {
        string folder = Corrupt("tiny", f => File.WriteAllBytes(Path.Combine(f, "model.safetensors"), [1, 2, 3]));
        Assert.Contains("truncated", LoadFails(folder).Message);
    }

    [Fact]
    public void MissingTensor_IsNamed()
    {
        string folder = Corrupt("missing", f =>
        {
            string path = Path.Combine(f, "model.safetensors");
            using var reader = new CheckpointReader(f);
            var kept = reader.Names.Where(n => n != "model.layers.1.mlp.up_proj.weight")
                .Select(n => new KeyValuePair<string, Tensor>(n, reader.Take(n, reader.ShapeOf(n), ScalarType.Float32).clone())).ToList();
            reader.Dispose();
            SafetensorsWriter.Write(path, kept);
        });
        var ex = LoadFails(folder);
        Assert.Equal("model.layers.1.mlp.up_proj.weight", ex.Field);
        Assert.Contains("missing", ex.Message);
    }

    [Fact]
    public void ConfigWeightMismatch_NamesTensorAndShapes()
    {
        string folder = Corrupt("mismatch", f =>
        {
            string path = Path.Combine(f, "config.json");
            var cfg = JsonNode.Parse(File.ReadAllText(path))!;
            cfg["intermediate_size"] = 200;
            File.WriteAllText(path, cfg.ToJsonString());
        });
        var ex = LoadFails(folder);
        Assert.Equal("model.layers.0.mlp.gate_proj.weight", ex.Field);
        Assert.Contains("[176, 64]", ex.Message);
        Assert.Contains("[200, 64]", ex.Message);
    }

    [Fact]
    public void UnsupportedArchitecture_IsNamed()
    {
        string folder = Corrupt("arch", f =>
        {
            string path = Path.Combine(f, "config.json");
            var cfg = JsonNode.Parse(File.ReadAllText(path))!;
            cfg["architectures"] = new JsonArray("GPTNeoXForCausalLM");
            File.WriteAllText(path, cfg.ToJsonString());
        });
        var ex = LoadFails(folder);
        Assert.Equal("architectures", ex.Field);
        Assert.Contains("GPTNeoXForCausalLM", ex.Message);
    }

    [Fact]
    public void WrongFieldType_IsNamed()
    {
        string folder = Corrupt("field-type", f =>
        {
            string path = Path.Combine(f, "config.json");
            var cfg = JsonNode.Parse(File.ReadAllText(path))!;
            cfg["num_hidden_layers"] = "two";
            File.WriteAllText(path, cfg.ToJsonString());
        });
        Assert.Equal("num_hidden_layers", LoadFails(folder).Field);
    }

    [Fact]
    public void ShardIndexPointingToMissingFile_IsReported()
    {
        string folder = ModelZoo.Copy(TransformerModelTests.ModelFor("llama-sharded-bf16"), "missing-shard");
        File.Delete(Path.Combine(folder, "model-00002-of-00003.safetensors"));
        var ex = LoadFails(folder);
        Assert.EndsWith("model-00002-of-00003.safetensors", ex.FilePath);
        Assert.Contains("not found", ex.Message);
    }

    [Fact]
    public void NoWeights_IsReported()
    {
        string folder = Corrupt("no-weights", f => File.Delete(Path.Combine(f, "model.safetensors")));
        Assert.Contains("no model.safetensors", LoadFails(folder).Message);
    }

    [Fact]
    public void TokenizerLargerThanVocab_IsReported()
    {
        string folder = Corrupt("vocab", f =>
        {
            string path = Path.Combine(f, "config.json");
            var cfg = JsonNode.Parse(File.ReadAllText(path))!;
            int vocab = cfg["vocab_size"]!.GetValue<int>();
            cfg["vocab_size"] = vocab - 10;
            File.WriteAllText(path, cfg.ToJsonString());
        });
        var ex = Assert.Throws<CoralModelException>(() => InferenceEngine.Load(folder, torch.CPU, ScalarType.Float32, 64).Dispose());
        Assert.Contains("vocab", ex.Message);
    }
}
