using System.Text.Json.Nodes;
using TorchSharp;
using static TorchSharp.torch;

namespace Coral.AI.Tests;

public class ModelConfigTests
{
    [Fact]
    public void RopeParameters_OfTransformers5_ReadAsRopeThetaAndRopeScaling()
    {
        // transformers 5 saves rope_theta and the scaling in one "rope_parameters" object. Read as the old fields, the
        // same model computes the same logits; ignored, a Llama-3 checkpoint would silently run with θ = 10,000.
        string old = TransformerModelTests.ModelFor("llama-tied-scaled");   // θ = 500,000 with llama3 scaling
        string v5 = ModelZoo.TempFolder("config-rope-parameters");
        foreach (string file in Directory.GetFiles(old))
        {
            File.Copy(file, Path.Combine(v5, Path.GetFileName(file)), overwrite: true);
        }

        JsonObject config = JsonNode.Parse(File.ReadAllText(Path.Combine(old, "config.json")))!.AsObject();
        var parameters = (JsonObject)config["rope_scaling"]!.DeepClone();
        parameters["rope_theta"] = config["rope_theta"]!.DeepClone();
        config.Remove("rope_scaling");
        config.Remove("rope_theta");
        config["rope_parameters"] = parameters;
        File.WriteAllText(Path.Combine(v5, "config.json"), config.ToJsonString());

        ModelConfig a = ModelConfig.Load(Path.Combine(old, "config.json")), b = ModelConfig.Load(Path.Combine(v5, "config.json"));
        Assert.Equal(500000.0, b.RopeTheta);
        Assert.NotNull(b.RopeScaling);
        Assert.Equal(a.RopeScaling, b.RopeScaling);

        using var first = TransformerModel.Load(old, torch.CPU, ScalarType.Float32, 64);
        using var second = TransformerModel.Load(v5, torch.CPU, ScalarType.Float32, 64);
        long[] ids = [1, 5, 9, 2, 7, 3];
        Assert.Equal(TorchTestHelpers.FullLogits(first, ids), TorchTestHelpers.FullLogits(second, ids));

        // An unsupported type is named by its field in the new layout too.
        parameters["rope_type"] = "yarn";
        File.WriteAllText(Path.Combine(v5, "config.json"), config.ToJsonString());
        var e = Assert.Throws<CoralModelException>(() => ModelConfig.Load(Path.Combine(v5, "config.json")));
        Assert.Contains("rope_parameters.rope_type", e.Message);
    }
}
