using System.Globalization;
using System.Text;
using static Coral.AI.JinjaValues;

namespace Coral.AI;

internal sealed partial class JinjaTemplate
{
    private sealed partial class Context
    {
        private object? Eval(JinjaExpr e)
        {
            switch (e)
            {
                case JLiteral l:
                    return l.Value;
                case JName n:
                    return Lookup(n.Name);
                case JList l:
                    return l.Items.Select(Eval).ToList();
                case JDict d:
                {
                    var dict = new OrderedDictionary<string, object?>();
                    foreach (var (k, v) in d.Items)
                    {
                        dict[Str(Eval(k))] = Eval(v);
                    }

                    return dict;
                }

                case JAttr a:
                    return GetAttr(Eval(a.Target), a.Name, a.Line);
                case JItem i:
                    return GetItem(Eval(i.Target), Eval(i.Index), i.Line);
                case JSlice s:
                    return Slice(Eval(s.Target), s.Start is null ? null : Eval(s.Start), s.Stop is null ? null : Eval(s.Stop), s.Step is null ? null : Eval(s.Step), s.Line);
                case JCall c:
                {
                    object? target = Eval(c.Target);
                    var args = c.Args.Select(Eval).ToList();
                    var kwargs = c.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value));
                    return target switch
                    {
                        JinjaCallable f => f(args, kwargs),
                        JinjaUndefined u => throw Error(c.Line, $"'{u.Name}' is undefined"),
                        _ => throw Error(c.Line, $"'{TypeName(target)}' object is not callable"),
                    };
                }

                case JFilter f:
                {
                    object? value = Eval(f.Target);
                    return ApplyFilter(f.Name, value, f.Args.Select(Eval).ToList(), f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value)), f.Line);
                }

                case JTest t:
                {
                    bool result = ApplyTest(t.Name, Eval(t.Target), t.Args.Select(Eval).ToList(), t.Line);
                    return t.Negated ? !result : result;
                }

                case JUnary u:
                {
                    object? v = Eval(u.Operand);
                    return u.Op switch
                    {
                        "not" => !Truthy(v),
                        "-" => v switch
                        {
                            long l => (object)(-l),
                            double d => -d,
                            bool b => b ? -1L : 0L,
                            _ => throw Error(u.Line, $"bad operand type for unary -: '{TypeName(v)}'"),
                        },
                        _ => throw Error(u.Line, $"unknown operator {u.Op}"),
                    };
                }

                case JBinary b:
                    return Binary(b);
                case JCondition c:
                    return Truthy(Eval(c.Condition)) ? Eval(c.Then) : c.Else is null ? new JinjaUndefined("if-expression") : Eval(c.Else);
                default:
                    throw Error(e.Line, "unknown expression");
            }
        }

        private object? Binary(JBinary b)
        {
            if (b.Op == "and")
            {
                object? l = Eval(b.Left);
                return Truthy(l) ? Eval(b.Right) : l;
            }

            if (b.Op == "or")
            {
                object? l = Eval(b.Left);
                return Truthy(l) ? l : Eval(b.Right);
            }

            object? x = Eval(b.Left), y = Eval(b.Right);
            switch (b.Op)
            {
                case "==": return PyEquals(x, y);
                case "!=": return !PyEquals(x, y);
                case "<": return Compare(x, y) < 0;
                case "<=": return Compare(x, y) <= 0;
                case ">": return Compare(x, y) > 0;
                case ">=": return Compare(x, y) >= 0;
                case "in": return Contains(y, x, b.Line);
                case "not in": return !Contains(y, x, b.Line);
                case "~": return _state.CheckSize(Str(x) + Str(y));
            }

            if (x is JinjaUndefined ux || y is JinjaUndefined uy)
            {
                throw Error(b.Line, $"'{(x as JinjaUndefined ?? (JinjaUndefined)y!).Name}' is undefined");
            }

            if (b.Op == "+")
            {
                switch (x, y)
                {
                    case (string s1, string s2):
                        return _state.CheckSize(s1 + s2);
                    case (List<object?> l1, List<object?> l2):
                        return l1.Concat(l2).ToList();
                }
            }

            if (b.Op == "*" && x is string rep && y is long times)
            {
                return (long)rep.Length * times > _state.Limits.MaxOutputChars
                    ? _state.CheckSize(new string(' ', _state.Limits.MaxOutputChars + 1))
                    : string.Concat(Enumerable.Repeat(rep, (int)Math.Max(times, 0)));
            }

            if (b.Op == "%" && x is string fmt)
            {
                return PercentFormat(fmt, y);
            }

            if (!IsNumber(x) || !IsNumber(y))
            {
                throw Error(b.Line, $"unsupported operand type(s) for {b.Op}: '{TypeName(x)}' and '{TypeName(y)}'");
            }

            bool ints = x is long or bool && y is long or bool;
            if (ints)
            {
                long a = ToLong(x), c = ToLong(y);
                switch (b.Op)
                {
                    case "+": return a + c;
                    case "-": return a - c;
                    case "*": return a * c;
                    case "//": return c == 0 ? throw Error(b.Line, "integer division by zero") : (long)Math.Floor((double)a / c);
                    case "%": return c == 0 ? throw Error(b.Line, "integer modulo by zero") : ((a % c) + c) % c;
                    case "**": return (long)Math.Pow(a, c);
                }
            }

            double p = ToDouble(x), q = ToDouble(y);
            return b.Op switch
            {
                "+" => p + q,
                "-" => p - q,
                "*" => p * q,
                "/" => q == 0 ? throw Error(b.Line, "division by zero") : p / q,
                "//" => q == 0 ? throw Error(b.Line, "division by zero") : Math.Floor(p / q),
                "%" => q == 0 ? throw Error(b.Line, "modulo by zero") : p - q * Math.Floor(p / q),
                "**" => Math.Pow(p, q),
                _ => throw Error(b.Line, $"unknown operator {b.Op}"),
            };
        }

        private static string PercentFormat(string fmt, object? args)
        {
            var values = args as List<object?> ?? [args];
            int next = 0;
            return ExpandPercent(fmt, f => f switch
            {
                's' => Str(values[next++]),
                'd' => ToLong(values[next++]).ToString(CultureInfo.InvariantCulture),
                'r' => Repr(values[next++]),
                _ => "%" + f,
            });
        }

        private static bool Contains(object? container, object? item, int line) => container switch
        {
            JinjaUndefined => false,
            string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw Error(line, $"'in <string>' requires string as left operand, not {TypeName(item)}"),
            List<object?> l => l.Any(x => PyEquals(x, item)),
            OrderedDictionary<string, object?> d => item is string k && d.ContainsKey(k),
            null => throw Error(line, "argument of type 'NoneType' is not iterable"),
            _ => throw Error(line, $"argument of type '{TypeName(container)}' is not iterable"),
        };

        private object? GetAttr(object? obj, string name, int line)
        {
            switch (obj)
            {
                case JinjaUndefined u:
                    throw Error(line, $"'{u.Name}' is undefined");
                case JinjaNamespace ns:
                    return ns.Values.TryGetValue(name, out object? nv) ? nv : new JinjaUndefined(name);
                case LoopInfo loop:
                    return loop.Attr(name);
                case OrderedDictionary<string, object?> d when name is "items" or "keys" or "values" or "get":
                    return Method(d, name, line);
                case OrderedDictionary<string, object?> d:
                    return d.TryGetValue(name, out object? v) ? v : new JinjaUndefined(name);
                case string or List<object?> when HasMethod(obj, name):
                    return Method(obj, name, line);
                default:
                    return new JinjaUndefined(name);
            }
        }

        private object? GetItem(object? obj, object? key, int line)
        {
            switch (obj)
            {
                case JinjaUndefined u:
                    throw Error(line, $"'{u.Name}' is undefined");
                case OrderedDictionary<string, object?> d:
                    return key is string k && d.TryGetValue(k, out object? v) ? v : new JinjaUndefined(Str(key));
                case List<object?> l when key is long or bool:
                {
                    long i = ToLong(key);
                    i = i < 0 ? l.Count + i : i;
                    return i >= 0 && i < l.Count ? l[(int)i] : new JinjaUndefined($"[{key}]");
                }

                case string s when key is long or bool:
                {
                    var chars = StringElementsOf(s);
                    long i = ToLong(key);
                    i = i < 0 ? chars.Count + i : i;
                    return i >= 0 && i < chars.Count ? chars[(int)i] : new JinjaUndefined($"[{key}]");
                }

                case JinjaNamespace or LoopInfo or string or List<object?> when key is string name:
                    return GetAttr(obj, name, line);
                default:
                    return new JinjaUndefined(Str(key));
            }
        }

        private static List<string> StringElementsOf(string s) => StringElements(s).ToList();

        private static object? Slice(object? obj, object? start, object? stop, object? step, int line)
        {
            long st = step is null ? 1 : ToLong(step);
            if (st == 0)
            {
                throw Error(line, "slice step cannot be zero");
            }

            List<object?> items = obj switch
            {
                List<object?> l => l,
                string s => StringElements(s).Cast<object?>().ToList(),
                JinjaUndefined u => throw Error(line, $"'{u.Name}' is undefined"),
                _ => throw Error(line, $"'{TypeName(obj)}' object is not subscriptable"),
            };
            int n = items.Count;
            long Norm(object? v, long dflt)
            {
                if (v is null)
                {
                    return dflt;
                }

                long i = ToLong(v);
                if (i < 0)
                {
                    i += n;
                }

                return st > 0 ? Math.Clamp(i, 0, n) : Math.Clamp(i, -1, n - 1);
            }

            long a = Norm(start, st > 0 ? 0 : n - 1), b = Norm(stop, st > 0 ? n : -1);
            var result = new List<object?>();
            for (long i = a; st > 0 ? i < b : i > b; i += st)
            {
                result.Add(items[(int)i]);
            }

            return obj is string ? string.Concat(result.Cast<string>()) : result;
        }
    }
}
