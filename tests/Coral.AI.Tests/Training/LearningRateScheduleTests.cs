using Coral.AI.Training;

namespace Coral.AI.Tests;

public class LearningRateScheduleTests
{
    [Fact]
    public void WarmsUpLinearly_ThenDecaysLinearlyTowardZero()
    {
        const double peak = 0.01;
        double[] lr = Enumerable.Range(0, 14).Select(s => LearningRateSchedule.At(s, peak, 4, 14)).ToArray();
        Assert.Equal([0.0025, 0.005, 0.0075, 0.01], lr[..4].Select(x => Math.Round(x, 10)));
        Assert.Equal(peak, lr[4], 12);                          // the first step after warm-up is the peak
        Assert.Equal(peak / 10, lr[13], 12);                    // 10 decay steps: the last is a tenth of it
        Assert.All(lr.Zip(lr.Skip(1)).Skip(4), p => Assert.True(p.Second < p.First));
        Assert.Equal(peak, LearningRateSchedule.At(0, peak, 0, 5), 12);   // no warm-up
        Assert.Equal(0, LearningRateSchedule.At(20, peak, 0, 5));          // past the end, never negative
    }
}
