namespace Coral.AI.Tests;

public class StopSequenceMatcherTests
{
    [Fact]
    public void StopAcrossPieces_IsFoundAndNotEmitted()
    {
        var m = new StopSequenceMatcher(["</end>"]);
        var emitted = new List<string>();
        bool stopped = false;
        foreach (string piece in new[] { "Hello <", "/e", "nd> tail" })
        {
            (string e, stopped) = m.Push(piece);
            emitted.Add(e);
            if (stopped)
            {
                break;
            }
        }

        Assert.True(stopped);
        Assert.Equal("Hello ", string.Concat(emitted));
    }

    [Fact]
    public void PartialPrefix_IsHeldBack_ThenReleased()
    {
        var m = new StopSequenceMatcher(["STOP"]);
        Assert.Equal(("abc", false), m.Push("abcST"));
        Assert.Equal(("STx", false), m.Push("x"));
        Assert.Equal((string.Empty, false), m.Push("S"));
        Assert.Equal("S", m.Flush());
    }

    [Fact]
    public void EarliestOfSeveralStops_Wins()
    {
        var m = new StopSequenceMatcher(["world", "lo w"]);
        Assert.Equal(("Hel", true), m.Push("Hello world"));
    }

    [Fact]
    public void NoStops_PassesThrough()
    {
        var m = new StopSequenceMatcher(null);
        Assert.Equal(("anything", false), m.Push("anything"));
        Assert.Equal(string.Empty, m.Flush());
    }
}
