using Coral.AI;
using Microsoft.Extensions.AI;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Microsoft.Extensions.DependencyInjection;

/// <summary>Registers Coral as the application's <see cref="IChatClient"/> (and <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/>).</summary>
public static class CoralServiceCollectionExtensions
{
    /// <summary>
    /// Registers a singleton <see cref="CoralModelHost"/> (loaded in the background at start by a hosted service), a
    /// <see cref="CoralChatClient"/> over it as <see cref="IChatClient"/>, and options validated at start.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="configure">Sets the options (at least <see cref="CoralChatClientOptions.ModelPath"/>).</param>
    /// <returns>The <see cref="ChatClientBuilder"/>, to add middleware such as <c>UseFunctionInvocation()</c>.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    public static ChatClientBuilder AddCoralChatClient(this IServiceCollection services, Action<CoralChatClientOptions> configure) =>
        AddKeyedCoralChatClient(services, null, configure);

    /// <summary>Registers Coral with options bound from a configuration section (for example <c>Coral</c>).</summary>
    /// <param name="services">The service collection.</param>
    /// <param name="section">The configuration section holding <see cref="CoralChatClientOptions"/> values.</param>
    /// <returns>The <see cref="ChatClientBuilder"/>.</returns>
    /// <exception cref="ArgumentNullException">An argument is <see langword="null"/>.</exception>
    public static ChatClientBuilder AddCoralChatClient(this IServiceCollection services, IConfigurationSection section)
    {
        _ = Throw.IfNull(section);
        return AddKeyedCoralChatClient(services, null, section.Bind);
    }

    /// <summary>Registers a keyed Coral chat client (and its own model host) under <paramref name="serviceKey"/>.</summary>
    /// <param name="services">The service collection.</param>
    /// <param name="serviceKey">The key; <see langword="null"/> registers the default (unkeyed) client.</param>
    /// <param name="configure">Sets the options.</param>
    /// <returns>The <see cref="ChatClientBuilder"/>.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static ChatClientBuilder AddKeyedCoralChatClient(this IServiceCollection services, object? serviceKey, Action<CoralChatClientOptions> configure)
    {
        _ = Throw.IfNull(services);
        _ = Throw.IfNull(configure);
        string optionsName = serviceKey is null ? Options.Options.DefaultName : "coral:" + serviceKey;
        services.AddOptions<CoralChatClientOptions>(optionsName).Configure(configure).ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<CoralChatClientOptions>, CoralChatClientOptionsValidator>());

        CoralModelHost CreateHost(IServiceProvider sp) => new(
            sp.GetRequiredService<IOptionsMonitor<CoralChatClientOptions>>().Get(optionsName),
            sp.GetService<ILogger<CoralModelHost>>());

        if (serviceKey is null)
        {
            services.AddSingleton(CreateHost);
            services.AddSingleton<IHostedService>(sp => new CoralModelWarmupService(sp.GetRequiredService<CoralModelHost>()));
            return services.AddChatClient(sp => new CoralChatClient(sp.GetRequiredService<CoralModelHost>()));
        }

        services.AddKeyedSingleton(serviceKey, (sp, _) => CreateHost(sp));
        services.AddSingleton<IHostedService>(sp => new CoralModelWarmupService(sp.GetRequiredKeyedService<CoralModelHost>(serviceKey)));
        return services.AddKeyedChatClient(serviceKey, sp => new CoralChatClient(sp.GetRequiredKeyedService<CoralModelHost>(serviceKey)));
    }

    /// <summary>
    /// Registers a <see cref="CoralEmbeddingGenerator"/> as <see cref="IEmbeddingGenerator{TInput, TEmbedding}"/> over the
    /// model host that <see cref="AddCoralChatClient(IServiceCollection, Action{CoralChatClientOptions})"/> (or its keyed form,
    /// under the same <paramref name="serviceKey"/>) registered: one model serves both, through one queue.
    /// </summary>
    /// <param name="services">The service collection.</param>
    /// <param name="serviceKey">The key the chat client was registered under, or <see langword="null"/> for the default.</param>
    /// <returns>The <see cref="EmbeddingGeneratorBuilder{TInput, TEmbedding}"/>, to add middleware such as caching.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> is <see langword="null"/>.</exception>
    public static EmbeddingGeneratorBuilder<string, Embedding<float>> AddCoralEmbeddingGenerator(this IServiceCollection services, object? serviceKey = null)
    {
        _ = Throw.IfNull(services);
        return serviceKey is null
            ? services.AddEmbeddingGenerator(sp => new CoralEmbeddingGenerator(sp.GetRequiredService<CoralModelHost>()))
            : services.AddKeyedEmbeddingGenerator(serviceKey, sp => new CoralEmbeddingGenerator(sp.GetRequiredKeyedService<CoralModelHost>(serviceKey)));
    }

    /// <summary>Adds a health check that reports the (default or keyed) Coral model host: loading, ready or failed.</summary>
    /// <param name="builder">The health checks builder.</param>
    /// <param name="name">The check's name.</param>
    /// <param name="serviceKey">The key the host was registered under, or <see langword="null"/>.</param>
    /// <param name="tags">Tags for filtering (for example <c>ready</c>).</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> is <see langword="null"/>.</exception>
    public static IHealthChecksBuilder AddCoral(this IHealthChecksBuilder builder, string name = "coral", object? serviceKey = null, IEnumerable<string>? tags = null)
    {
        _ = Throw.IfNull(builder);
        return builder.Add(new Diagnostics.HealthChecks.HealthCheckRegistration(
            name,
            sp => new CoralModelHealthCheck(serviceKey is null ? sp.GetRequiredService<CoralModelHost>() : sp.GetRequiredKeyedService<CoralModelHost>(serviceKey)),
            failureStatus: null,
            tags));
    }
}
