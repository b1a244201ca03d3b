namespace Coral.AI;

/// <summary>The life cycle of a <see cref="CoralModelHost"/>.</summary>
public enum CoralModelState
{
    /// <summary>Loading has not started.</summary>
    NotStarted,

    /// <summary>Weights are being loaded.</summary>
    Loading,

    /// <summary>The model is loaded and serving.</summary>
    Ready,

    /// <summary>Loading failed; see <see cref="CoralModelHost.Failure"/>.</summary>
    Failed,
}
