using System.Text;

namespace Coral.AI;

/// <summary>Limits that turn a hostile template into a clear error instead of a hang or an out-of-memory.</summary>
internal sealed record JinjaLimits(int MaxOutputChars = 4_000_000, long MaxIterations = 2_000_000, int MaxCallDepth = 64);

/// <summary>
/// A sandboxed Jinja2 template with the semantics transformers renders chat templates with (immutable sandbox,
/// trim_blocks, lstrip_blocks, loop controls, Python value behaviour). No file, network or reflection access: values are
/// JSON-like data, and only the filters, tests, methods and globals implemented here exist.
/// </summary>
internal sealed partial class JinjaTemplate
{
    private readonly List<JinjaNode> _body;

    private JinjaTemplate(List<JinjaNode> body) => _body = body;

    public static JinjaTemplate Parse(string source) => new(JinjaParser.Parse(source));

    /// <summary>Renders with <paramref name="variables"/>; <paramref name="now"/> feeds <c>strftime_now</c>.</summary>
    public string Render(IReadOnlyDictionary<string, object?> variables, DateTime? now = null, JinjaLimits? limits = null)
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
        }
    }

    private enum Flow
    {
        Normal,
        Break,
        Continue,
    }
}
