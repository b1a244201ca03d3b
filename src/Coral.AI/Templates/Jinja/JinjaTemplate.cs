using System.Text;

namespace Coral.AI;

/// <summary>Limits that turn a hostile template into a clear error instead of a hang or an out-of-memory.</summary>
internal sealed record JinjaLimits(int MaxOutputChars = 4_000_000, long MaxIterations = 2_000_000, int MaxCallDepth = 64, double MaxSeconds = 10);

/// <summary>
/// A sandboxed Jinja2 template with the semantics transformers renders chat templates with (immutable sandbox,
/// trim_blocks, lstrip_blocks, loop controls, Python value behaviour). No file, network or reflection access: values are
/// JSON-like data, and only the filters, tests, methods and globals implemented here exist.
/// </summary>
internal sealed partial class JinjaTemplate
{
    private readonly List<JinjaNode> _body;

    private JinjaTemplate(List<JinjaNode> body) => _body = body;

    public static JinjaTemplate Parse(string source) => Guard(() => new JinjaTemplate(JinjaParser.Parse(source)));

    /// <summary>Turns any runtime fault (a missing argument, a bad cast) into a <see cref="ChatTemplateException"/>.</summary>
    private static T Guard<T>(Func<T> action)
    {
        try
        {
            return action();
        }
        catch (Exception ex) when (ex is ArgumentException or IndexOutOfRangeException or InvalidCastException or KeyNotFoundException
            or NullReferenceException or FormatException or OverflowException or InvalidOperationException)
        {
            throw new ChatTemplateException($"template error: {ex.Message}");
        }
    }

    /// <summary>Renders with <paramref name="variables"/>; <paramref name="now"/> feeds <c>strftime_now</c>.</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables, DateTime? now = null, JinjaLimits? limits = null) =>
        Guard(() => RenderCore(variables, now, limits));

    private string RenderCore(IReadOnlyDictionary<string, object?> variables, DateTime? now, JinjaLimits? limits)
    {
        var state = new RenderState(limits ?? new JinjaLimits(), now ?? DateTime.Now);
        var globals = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["raise_exception"] = (JinjaCallable)((args, _) =>
                throw new ChatTemplateException(args.Count > 0 ? JinjaValues.Str(args[0]) : "raise_exception called", raisedByTemplate: true)),
            ["strftime_now"] = (JinjaCallable)((args, _) => JinjaValues.Strftime(state.Now, args.Count > 0 ? JinjaValues.Str(args[0]) : string.Empty)),
            ["namespace"] = (JinjaCallable)((args, kwargs) =>
            {
                var ns = new JinjaNamespace();
                if (args.Count > 0 && args[0] is OrderedDictionary<string, object?> init)
                {
                    foreach (var (k, v) in init)
                    {
                        ns.Values[k] = v;
                    }
                }

                foreach (var (k, v) in kwargs)
                {
                    ns.Values[k] = v;
                }

                return ns;
            }),
            ["range"] = (JinjaCallable)((args, _) => Range(args, state)),
            ["dict"] = (JinjaCallable)((_, kwargs) => new OrderedDictionary<string, object?>(kwargs)),
        };
        var scopes = new List<Dictionary<string, object?>> { globals, new(variables, StringComparer.Ordinal), new(StringComparer.Ordinal) };
        var output = new StringBuilder();
        var ctx = new Context(state, scopes, output);
        ctx.RenderNodes(_body);
        return output.ToString();
    }

    private static List<object?> Range(List<object?> args, RenderState state)
    {
        long start = 0, stop, step = 1;
        if (args.Count == 1)
        {
            stop = ToLong(args[0]);
        }
        else
        {
            start = ToLong(args[0]);
            stop = ToLong(args[1]);
            step = args.Count > 2 ? ToLong(args[2]) : 1;
        }

        if (step == 0)
        {
            throw new ChatTemplateException("range() arg 3 must not be zero.");
        }

        var list = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step)
        {
            state.Tick();
            list.Add(i);
        }

        return list;
    }

    internal static long ToLong(object? v) => v switch
    {
        long l => l,
        bool b => b ? 1 : 0,
        double d => (long)d,
        _ => throw new ChatTemplateException($"'{JinjaValues.TypeName(v)}' object cannot be interpreted as an integer."),
    };

    /// <summary>Counters shared by one render.</summary>
    private sealed class RenderState(JinjaLimits limits, DateTime now)
    {
        private readonly long _started = System.Diagnostics.Stopwatch.GetTimestamp();
        private long _iterations;

        public JinjaLimits Limits { get; } = limits;

        public DateTime Now { get; } = now;

        public int CallDepth { get; set; }

        public void Tick()
        {
            if (++_iterations > Limits.MaxIterations)
            {
                throw new ChatTemplateException($"template exceeded {Limits.MaxIterations} loop iterations.");
            }

            if ((_iterations & 1023) == 0 && System.Diagnostics.Stopwatch.GetElapsedTime(_started).TotalSeconds > Limits.MaxSeconds)
            {
                throw new ChatTemplateException($"template rendering exceeded {Limits.MaxSeconds} s.");
            }
        }

        public string CheckSize(string s) => s.Length > Limits.MaxOutputChars
            ? throw new ChatTemplateException($"template built a string longer than {Limits.MaxOutputChars} characters.")
            : s;
    }

    private enum Flow
    {
        Normal,
        Break,
        Continue,
    }
}
