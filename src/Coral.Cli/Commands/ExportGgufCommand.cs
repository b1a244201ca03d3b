using Coral.AI;

namespace Coral.Cli;

/// <summary><c>coral export-gguf</c>: writes the model as a GGUF file for llama.cpp.</summary>
internal static class ExportGgufCommand
{
    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var cl = new CommandLine(args, new HashSet<string> { "--model", "--out", "--type" }, new HashSet<string>());
        string output = cl.Required("--out");
        GgufExporter.Export(cl.Required("--model"), output, cl.Value("--type") ?? "f32");
        stderr.WriteLine($"wrote {output} ({new FileInfo(output).Length / 1048576.0:F1} MiB)");
        return 0;
    }
}
