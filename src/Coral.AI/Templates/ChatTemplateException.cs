namespace Coral.AI;

/// <summary>
/// A chat template that cannot be rendered: a syntax error, a runtime error (as Python/Jinja would raise), a template's
/// own <c>raise_exception(...)</c>, or a resource limit hit by a hostile template.
/// </summary>
public sealed class ChatTemplateException : Exception
{
    /// <summary>Initializes a new instance of the <see cref="ChatTemplateException"/> class.</summary>
    /// <param name="message">What went wrong.</param>
    /// <param name="raisedByTemplate">Whether the template raised it with <c>raise_exception</c>.</param>
    public ChatTemplateException(string message, bool raisedByTemplate = false)
        : base(message)
    {
        RaisedByTemplate = raisedByTemplate;
    }

    /// <summary>Gets whether the template itself raised the error (<c>raise_exception</c>); the message is then the template's.</summary>
    public bool RaisedByTemplate { get; }
}
