using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace Coral.AI;

/// <summary>Reports a <see cref="CoralModelHost"/>: Degraded while loading, Healthy when ready, Unhealthy when loading failed.</summary>
public sealed class CoralModelHealthCheck : IHealthCheck
{
    private readonly CoralModelHost _host;

    /// <summary>Initializes a new instance of the <see cref="CoralModelHealthCheck"/> class.</summary>
    /// <param name="host">The host to report on.</param>
    /// <exception cref="ArgumentNullException"><paramref name="host"/> is <see langword="null"/>.</exception>
    public CoralModelHealthCheck(CoralModelHost host) => _host = Throw.IfNull(host);

    /// <inheritdoc />
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var data = new Dictionary<string, object> { ["model"] = _host.ModelId, ["state"] = _host.State.ToString() };
        HealthCheckResult result = _host.State switch
        {
            CoralModelState.Ready => HealthCheckResult.Healthy($"Model '{_host.ModelId}' is ready.", data),
            CoralModelState.Failed => HealthCheckResult.Unhealthy($"Model '{_host.ModelId}' failed to load: {_host.Failure?.Message}", _host.Failure, data),
            CoralModelState.Loading => HealthCheckResult.Degraded($"Model '{_host.ModelId}' is loading.", data: data),
            _ => HealthCheckResult.Degraded($"Model '{_host.ModelId}' has not started loading.", data: data),
        };
        return Task.FromResult(result);
    }
}
