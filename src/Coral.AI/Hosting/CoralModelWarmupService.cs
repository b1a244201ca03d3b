using Microsoft.Extensions.Hosting;

namespace Coral.AI;

/// <summary>Starts loading the model host when the application starts, without delaying startup.</summary>
internal sealed class CoralModelWarmupService : IHostedService
{
    private readonly CoralModelHost _host;

    public CoralModelWarmupService(CoralModelHost host) => _host = host;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _ = _host.StartLoading();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
