using System.Text;

namespace Coral.AI;

internal sealed partial class JinjaTemplate
{
    /// <summary>The loop variable of a for-loop.</summary>
    private sealed class LoopInfo(List<object?> items)
    {
        public int Index0 { get; set; }

        public List<object?> Items { get; } = items;

        public object? Attr(string name) => name switch
        {
            "index0" => (long)Index0,
            "index" => (long)(Index0 + 1),
            "revindex0" => (long)(Items.Count - Index0 - 1),
            "revindex" => (long)(Items.Count - Index0),
            "first" => Index0 == 0,
            "last" => Index0 == Items.Count - 1,
            "length" => (long)Items.Count,
            "previtem" => Index0 > 0 ? Items[Index0 - 1] : new JinjaUndefined("previtem"),
            "nextitem" => Index0 + 1 < Items.Count ? Items[Index0 + 1] : new JinjaUndefined("nextitem"),
            "depth" => 1L,
            "depth0" => 0L,
            "cycle" => (JinjaCallable)((args, _) => args.Count == 0 ? null : args[Index0 % args.Count]),
            _ => new JinjaUndefined(name),
        };
    }

    /// <summary>Evaluates nodes and expressions against a stack of scopes, writing to the output.</summary>
    private sealed partial class Context(RenderState state, List<Dictionary<string, object?>> scopes, StringBuilder output)
    {
        private readonly RenderState _state = state;
        private readonly List<Dictionary<string, object?>> _scopes = scopes;
        private StringBuilder _out = output;

        public Flow RenderNodes(List<JinjaNode> nodes)
        {
            foreach (JinjaNode node in nodes)
            {
                Flow flow = Render(node);
                if (flow != Flow.Normal)
                {
                    return flow;
                }
            }

            return Flow.Normal;
        }

        private void Write(string s)
        {
            _out.Append(s);
            if (_out.Length > _state.Limits.MaxOutputChars)
            {
                throw new ChatTemplateException($"template output exceeded {_state.Limits.MaxOutputChars} characters.");
            }
        }

        private Flow Render(JinjaNode node)
        {
            switch (node)
            {
                case NText t:
                    Write(t.Text);
                    return Flow.Normal;
                case NOutput o:
                    Write(JinjaValues.Str(Eval(o.Value)));
                    return Flow.Normal;
                case NIf n:
                    foreach (var (cond, body) in n.Branches)
                    {
                        if (JinjaValues.Truthy(Eval(cond)))
                        {
                            return RenderNodes(body);
                        }
                    }

                    return n.Else is null ? Flow.Normal : RenderNodes(n.Else);
                case NFor f:
                    RenderFor(f);
                    return Flow.Normal;
                case NSet s:
                    RenderSet(s);
                    return Flow.Normal;
                case NMacro m:
                    _scopes[^1][m.Name] = MakeMacro(m);
                    return Flow.Normal;
                case NCallBlock c:
                {
                    var callee = Eval(c.Call.Target) as JinjaCallable ?? throw Error(c.Line, "call block target is not callable");
                    List<JinjaNode> body = c.Body;
                    JinjaCallable caller = (_, _) => Capture(() => RenderNodes(body));
                    var kwargs = c.Call.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value));
                    kwargs["caller"] = caller;
                    Write(JinjaValues.Str(callee(c.Call.Args.Select(Eval).ToList(), kwargs)));
                    return Flow.Normal;
                }

                case NFilterBlock fb:
                {
                    string text = Capture(() => RenderNodes(fb.Body));
                    Write(JinjaValues.Str(ApplyFilter(fb.Name, text, fb.Args.Select(Eval).ToList(), [], fb.Line)));
                    return Flow.Normal;
                }

                case NBreak:
                    return Flow.Break;
                case NContinue:
                    return Flow.Continue;
                default:
                    throw Error(node.Line, "unknown node");
            }
        }

        private string Capture(Action render)
        {
            StringBuilder saved = _out;
            _out = new StringBuilder();
            try
            {
                render();
                return _out.ToString();
            }
            finally
            {
                _out = saved;
            }
        }

        private void RenderFor(NFor f)
        {
            object? iterable = Eval(f.Iterable);
            List<object?> items = Iterate(iterable, f.Line);
            var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
            _scopes.Add(scope);
            try
            {
                if (f.Filter is not null)
                {
                    items = items.Where(item =>
                    {
                        Bind(scope, f.Targets, item, f.Line);
                        return JinjaValues.Truthy(Eval(f.Filter));
                    }).ToList();
                }

                var loop = new LoopInfo(items);
                for (int i = 0; i < items.Count; i++)
                {
                    _state.Tick();
                    scope.Clear();
                    loop.Index0 = i;
                    scope["loop"] = loop;
                    Bind(scope, f.Targets, items[i], f.Line);
                    if (RenderNodes(f.Body) == Flow.Break)
                    {
                        break;
                    }
                }

                if (items.Count == 0 && f.Else is not null)
                {
                    scope.Clear();
                    RenderNodes(f.Else);
                }
            }
            finally
            {
                _scopes.RemoveAt(_scopes.Count - 1);
            }
        }

        private static void Bind(Dictionary<string, object?> scope, List<string> targets, object? item, int line)
        {
            if (targets.Count == 1)
            {
                scope[targets[0]] = item;
                return;
            }

            List<object?> parts = item as List<object?> ?? throw Error(line, $"cannot unpack '{JinjaValues.TypeName(item)}'");
            if (parts.Count != targets.Count)
            {
                throw Error(line, $"expected {targets.Count} values to unpack, got {parts.Count}");
            }

            for (int i = 0; i < targets.Count; i++)
            {
                scope[targets[i]] = parts[i];
            }
        }

        private void RenderSet(NSet s)
        {
            object? value = s.Value is not null ? Eval(s.Value) : Capture(() => RenderNodes(s.Body!));
            if (s.Attribute is not null)
            {
                if (Lookup(s.Targets[0]) is not JinjaNamespace ns)
                {
                    throw Error(s.Line, "cannot assign attribute on non-namespace object");
                }

                ns.Values[s.Attribute] = value;
                return;
            }

            if (s.Targets.Count == 1)
            {
                _scopes[^1][s.Targets[0]] = value;
                return;
            }

            Bind(_scopes[^1], s.Targets, value, s.Line);
        }

        private JinjaCallable MakeMacro(NMacro m) => (args, kwargs) =>
        {
            if (++_state.CallDepth > _state.Limits.MaxCallDepth)
            {
                throw new ChatTemplateException($"template exceeded the macro call depth limit ({_state.Limits.MaxCallDepth}).");
            }

            var scope = new Dictionary<string, object?>(StringComparer.Ordinal);
            for (int i = 0; i < m.Parameters.Count; i++)
            {
                var (name, def) = m.Parameters[i];
                scope[name] = i < args.Count ? args[i] : kwargs.TryGetValue(name, out object? kv) ? kv : def is null ? new JinjaUndefined(name) : Eval(def);
            }

            if (kwargs.TryGetValue("caller", out object? caller))
            {
                scope["caller"] = caller;
            }

            scope["varargs"] = args.Skip(m.Parameters.Count).ToList();
            _scopes.Add(scope);
            try
            {
                return Capture(() => RenderNodes(m.Body));
            }
            finally
            {
                _scopes.RemoveAt(_scopes.Count - 1);
                _state.CallDepth--;
            }
        };

        private object? Lookup(string name)
        {
            for (int i = _scopes.Count - 1; i >= 0; i--)
            {
                if (_scopes[i].TryGetValue(name, out object? v))
                {
                    return v;
                }
            }

            return new JinjaUndefined(name);
        }

        private static ChatTemplateException Error(int line, string message) => new($"line {line}: {message}.");

        private List<object?> Iterate(object? v, int line) => v switch
        {
            JinjaUndefined => [],
            List<object?> l => l,
            OrderedDictionary<string, object?> d => d.Keys.Cast<object?>().ToList(),
            string s => StringElements(s).Cast<object?>().ToList(),
            null => throw Error(line, "'NoneType' object is not iterable"),
            _ => throw Error(line, $"'{JinjaValues.TypeName(v)}' object is not iterable"),
        };

        private static IEnumerable<string> StringElements(string s)
        {
            for (int i = 0; i < s.Length; i += char.IsSurrogatePair(s, i) ? 2 : 1)
            {
                yield return char.IsSurrogatePair(s, i) ? s.Substring(i, 2) : s[i].ToString();
            }
        }
    }
}
