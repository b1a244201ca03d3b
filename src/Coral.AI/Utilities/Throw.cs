using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Coral.AI;

/// <summary>Argument guards with one shape, as in dotnet/extensions.</summary>
internal static class Throw
{
    public static T IfNull<T>([NotNull] T? argument, [CallerArgumentExpression(nameof(argument))] string? paramName = null)
        where T : class
    {
        if (argument is null)
        {
            throw new ArgumentNullException(paramName);
        }

        return argument;
    }

    public static string IfNullOrWhitespace([NotNull] string? argument, [CallerArgumentExpression(nameof(argument))] string? paramName = null)
    {
        if (string.IsNullOrWhiteSpace(argument))
        {
            throw argument is null ? new ArgumentNullException(paramName) : new ArgumentException("The value must not be empty.", paramName);
        }

        return argument;
    }
}
