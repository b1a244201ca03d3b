using TorchSharp;

namespace Coral.AI.Training;

/// <summary>Linear warm-up to the peak learning rate, then linear decay toward zero over the remaining steps.</summary>
internal static class LearningRateSchedule
{
    /// <summary>The learning rate of 0-based <paramref name="step"/> out of <paramref name="steps"/>.</summary>
    public static double At(int step, double peak, int warmupSteps, int steps) =>
        step < warmupSteps
            ? peak * (step + 1.0) / warmupSteps
            : peak * Math.Max(0.0, 1.0 - (double)(step - warmupSteps) / Math.Max(1, steps - warmupSteps));

    /// <summary>Sets every parameter group of <paramref name="optimizer"/> to the rate of <paramref name="step"/>; returns it.</summary>
    public static double Apply(torch.optim.Optimizer optimizer, int step, double peak, int warmupSteps, int steps)
    {
        double lr = At(step, peak, warmupSteps, steps);
        foreach (var group in optimizer.ParamGroups)
        {
            group.LearningRate = lr;
        }

        return lr;
    }
}
