using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Coral.AI.Training;

/// <summary>Copies saved weights (same names and shapes) into trainable parameters: resume, continue, convert.</summary>
internal static class ParameterLoader
{
    public static void Load(string folder, IReadOnlyDictionary<string, Parameter> parameters)
    {
        using var reader = new CheckpointReader(folder);
        using var noGrad = TorchSharp.torch.no_grad();
        foreach ((string name, Parameter p) in parameters)
        {
            using Tensor value = reader.Take(name, p.shape, ScalarType.Float32);
            p.copy_(value);
        }
    }
}
