using Coral.AI.Training;

namespace Coral.AI.Tests;

public class TrainingDataReaderTests
{
    [Theory]
    [InlineData("""{"messages": [{"content": "no role"}]}""", "messages[0] needs a string \"role\"")]
    [InlineData("""{"messages": [{"role": "user", "content": 5}]}""", "messages[0].content must be a string")]
    [InlineData("""{"messages": ["hello"]}""", "messages[0] is not an object")]
    [InlineData("""{"conversation": []}""", "needs \"messages\" or \"text\"")]
    [InlineData("""[1, 2]""", "not a JSON object")]
    public void BadLine_IsRejected_NamingFileLineAndField(string badLine, string expected)
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor("qwen2"));
        string path = Path.Combine(ModelZoo.TempFolder("bad-data"), "chat.jsonl");
        File.WriteAllLines(path, ["""{"text": "a fine first line"}""", "", badLine]);

        var ex = Assert.Throws<InvalidDataException>(() => TrainingDataReader.Read(path, tok, 64).ToList());
        Assert.Contains($"{path}:3:", ex.Message);
        Assert.Contains(expected, ex.Message);
    }

    [Fact]
    public void ChatLine_MissingContent_IsAnEmptyTurn()
    {
        var tok = HfTokenizer.Load(TransformerModelTests.ModelFor("qwen2"));
        string path = Path.Combine(ModelZoo.TempFolder("ok-data"), "chat.jsonl");
        File.WriteAllLines(path, ["""{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]}"""]);

        TrainingExample example = Assert.Single(TrainingDataReader.Read(path, tok, 256));
        Assert.Equal(example.Ids.Length, example.LossMask.Length);
    }
}
