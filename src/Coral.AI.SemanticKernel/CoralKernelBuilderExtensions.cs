using Coral.AI;
using Microsoft.Extensions.DependencyInjection;

namespace Microsoft.SemanticKernel;

/// <summary>Adds Coral to a Semantic Kernel builder.</summary>
public static class CoralKernelBuilderExtensions
{
    /// <summary>
    /// Registers a Coral <see cref="Microsoft.Extensions.AI.IChatClient"/> (with its model host, loaded in the background) on
    /// the kernel, with kernel function invocation built in so plugins are called automatically. SK prompt execution
    /// settings flow into <c>ChatOptions</c>; Coral's own knobs are extension-data keys (<c>speculative</c>,
    /// <c>tree_total_tokens</c>, <c>min_p</c>, ...).
    /// </summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="configure">Sets the options (at least <see cref="CoralChatClientOptions.ModelPath"/>).</param>
    /// <param name="serviceId">The service key, or <see langword="null"/> for the default chat client.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static IKernelBuilder AddCoralChatClient(this IKernelBuilder builder, Action<CoralChatClientOptions> configure, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddCoralChatClient(configure, serviceId);
        return builder;
    }

    /// <summary>The <see cref="IServiceCollection"/> twin of <see cref="AddCoralChatClient(IKernelBuilder, Action{CoralChatClientOptions}, string?)"/>.</summary>
    /// <param name="services">The service collection (for example <c>Kernel.CreateBuilder().Services</c> or an app's services).</param>
    /// <param name="configure">Sets the options.</param>
    /// <param name="serviceId">The service key, or <see langword="null"/> for the default chat client.</param>
    /// <returns>The services.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="services"/> or <paramref name="configure"/> is <see langword="null"/>.</exception>
    public static IServiceCollection AddCoralChatClient(this IServiceCollection services, Action<CoralChatClientOptions> configure, string? serviceId)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configure);
        var chatClient = serviceId is null ? services.AddCoralChatClient(configure) : services.AddKeyedCoralChatClient(serviceId, configure);
        chatClient.UseKernelFunctionInvocation(null);
        return services;
    }

    /// <summary>
    /// Registers a Coral <see cref="Microsoft.Extensions.AI.IEmbeddingGenerator{TInput, TEmbedding}"/> on the kernel over the
    /// model host of the Coral chat client registered with the same <paramref name="serviceId"/> (call
    /// <see cref="AddCoralChatClient(IKernelBuilder, Action{CoralChatClientOptions}, string?)"/> first): one model serves
    /// both, for SK's vector stores and text search.
    /// </summary>
    /// <param name="builder">The kernel builder.</param>
    /// <param name="serviceId">The chat client's service key, or <see langword="null"/> for the default.</param>
    /// <returns>The builder.</returns>
    /// <exception cref="ArgumentNullException"><paramref name="builder"/> is <see langword="null"/>.</exception>
    public static IKernelBuilder AddCoralEmbeddingGenerator(this IKernelBuilder builder, string? serviceId = null)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.Services.AddCoralEmbeddingGenerator(serviceId);
        return builder;
    }
}
