using System.Globalization;
using static Coral.AI.JinjaValues;

namespace Coral.AI;

internal sealed partial class JinjaTemplate
{
    private sealed partial class Context
    {
        private static string? OptString(List<object?> args, int i) => i < args.Count && args[i] is not null ? Str(args[i]) : null;

        /// <summary>The Python methods templates call on strings, dicts and lists (lists are immutable: the sandbox).</summary>
        private JinjaCallable Method(object? obj, string name, int line) => (obj, name) switch
        {
            (string s, "strip") => (a, _) => Strip(s, OptString(a, 0), true, true),
            (string s, "lstrip") => (a, _) => Strip(s, OptString(a, 0), true, false),
            (string s, "rstrip") => (a, _) => Strip(s, OptString(a, 0), false, true),
            (string s, "upper") => (_, _) => s.ToUpperInvariant(),
            (string s, "lower") => (_, _) => s.ToLowerInvariant(),
            (string s, "title") => (_, _) => Title(s),
            (string s, "capitalize") => (_, _) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant(),
            (string s, "startswith") => (a, _) => AnyPrefix(a[0], p => s.StartsWith(p, StringComparison.Ordinal)),
            (string s, "endswith") => (a, _) => AnyPrefix(a[0], p => s.EndsWith(p, StringComparison.Ordinal)),
            (string s, "split") => (a, _) => Split(s, OptString(a, 0), a.Count > 1 ? (int)ToLong(a[1]) : -1),
            (string s, "splitlines") => (_, _) => s.Split('\n').Select(x => (object?)x.TrimEnd('\r')).ToList(),
            (string s, "replace") => (a, _) => s.Replace(Str(a[0]), Str(a[1]), StringComparison.Ordinal),
            (string s, "find") => (a, _) => (long)s.IndexOf(Str(a[0]), StringComparison.Ordinal),
            (string s, "count") => (a, _) => (long)CountOccurrences(s, Str(a[0])),
            (string s, "join") => (a, _) => string.Join(s, Iterate(a[0], line).Select(Str)),
            (string s, "isdigit") => (_, _) => s.Length > 0 && s.All(char.IsDigit),
            (string s, "isalpha") => (_, _) => s.Length > 0 && s.All(char.IsLetter),
            (string s, "format") => (a, _) => FormatBraces(s, a),
            (OrderedDictionary<string, object?> d, "items") => (_, _) => d.Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList(),
            (OrderedDictionary<string, object?> d, "keys") => (_, _) => d.Keys.Cast<object?>().ToList(),
            (OrderedDictionary<string, object?> d, "values") => (_, _) => d.Values.ToList(),
            (OrderedDictionary<string, object?> d, "get") => (a, _) => a[0] is string k && d.TryGetValue(k, out object? v) ? v : a.Count > 1 ? a[1] : null,
            (List<object?> l, "index") => (a, _) => (long)l.FindIndex(x => PyEquals(x, a[0])),
            (List<object?> l, "count") => (a, _) => (long)l.Count(x => PyEquals(x, a[0])),
            (List<object?>, "append" or "extend" or "pop" or "insert" or "remove" or "clear" or "sort" or "reverse") =>
                throw Error(line, $"access to attribute '{name}' of 'list' object is unsafe (the sandbox is immutable)"),
            _ => throw Error(line, $"'{TypeName(obj)}' object has no attribute '{name}'"),
        };

        private static readonly HashSet<string> StringMethods =
            ["strip", "lstrip", "rstrip", "upper", "lower", "title", "capitalize", "startswith", "endswith", "split", "splitlines",
             "replace", "find", "count", "join", "isdigit", "isalpha", "format"];

        private static readonly HashSet<string> ListMethods =
            ["index", "count", "append", "extend", "pop", "insert", "remove", "clear", "sort", "reverse"];

        private static bool HasMethod(object? obj, string name) => obj switch
        {
            string => StringMethods.Contains(name),
            List<object?> => ListMethods.Contains(name),
            _ => false,
        };

        private static bool AnyPrefix(object? arg, Func<string, bool> test) =>
            arg is List<object?> options ? options.Any(o => test(Str(o))) : test(Str(arg));

        private static int CountOccurrences(string s, string sub)
        {
            if (sub.Length == 0)
            {
                return s.Length + 1;
            }

            int n = 0;
            for (int i = s.IndexOf(sub, StringComparison.Ordinal); i >= 0; i = s.IndexOf(sub, i + sub.Length, StringComparison.Ordinal))
            {
                n++;
            }

            return n;
        }

        private static List<object?> Split(string s, string? sep, int max)
        {
            if (sep is null)
            {
                var parts = new List<object?>();
                int i = 0;
                while (i < s.Length)
                {
                    while (i < s.Length && IsPyWhitespace(s[i]))
                    {
                        i++;
                    }

                    if (i >= s.Length)
                    {
                        break;
                    }

                    if (max >= 0 && parts.Count == max)
                    {
                        parts.Add(s[i..].TrimEnd());
                        break;
                    }

                    int j = i;
                    while (j < s.Length && !IsPyWhitespace(s[j]))
                    {
                        j++;
                    }

                    parts.Add(s[i..j]);
                    i = j;
                }

                return parts;
            }

            if (sep.Length == 0)
            {
                throw new ChatTemplateException("empty separator.");
            }

            string[] pieces = max >= 0 ? s.Split(sep, max + 1) : s.Split(sep);
            return pieces.Cast<object?>().ToList();
        }

        private static string FormatBraces(string format, List<object?> args)
        {
            int next = 0;
            var sb = new System.Text.StringBuilder();
            for (int i = 0; i < format.Length; i++)
            {
                if (format[i] == '{' && i + 1 < format.Length && format[i + 1] == '}')
                {
                    sb.Append(next < args.Count ? Str(args[next++]) : string.Empty);
                    i++;
                }
                else
                {
                    sb.Append(format[i]);
                }
            }

            return sb.ToString();
        }

        private object? ApplyFilter(string name, object? v, List<object?> a, Dictionary<string, object?> kw, int line)
        {
            object? Arg(int i, string key, object? dflt = null) => i < a.Count ? a[i] : kw.TryGetValue(key, out object? x) ? x : dflt;
            switch (name)
            {
                case "trim":
                    return Strip(Str(v), OptString(a, 0), true, true);
                case "tojson":
                    return ToJson(v, Arg(0, "indent") is object ind ? (int)ToLong(ind) : null);
                case "length" or "count":
                    return v switch
                    {
                        JinjaUndefined => 0L,
                        string s => (long)StringElements(s).Count(),
                        List<object?> l => (long)l.Count,
                        OrderedDictionary<string, object?> d => (long)d.Count,
                        _ => throw Error(line, $"object of type '{TypeName(v)}' has no len()"),
                    };
                case "upper":
                    return Str(v).ToUpperInvariant();
                case "lower":
                    return Str(v).ToLowerInvariant();
                case "title":
                    return Title(Str(v));
                case "capitalize":
                    return Method(Str(v), "capitalize", line)([], []);
                case "replace":
                    return Str(v).Replace(Str(a[0]), Str(a[1]), StringComparison.Ordinal);
                case "string":
                    return Str(v);
                case "safe" or "e" or "escape" when name == "safe":
                    return v;
                case "int":
                    return v switch
                    {
                        long l => l,
                        double d => (long)d,
                        bool b => b ? 1L : 0L,
                        string s when long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long p) => p,
                        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double p) => (long)p,
                        _ => Arg(0, "default", 0L),
                    };
                case "float":
                    return v switch
                    {
                        long or double or bool => ToDouble(v),
                        string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double p) => p,
                        _ => Arg(0, "default", 0.0),
                    };
                case "abs":
                    return v is long l2 ? (object)Math.Abs(l2) : Math.Abs(ToDouble(v));
                case "round":
                    return Math.Round(ToDouble(v), (int)ToLong(Arg(0, "precision", 0L)), MidpointRounding.ToEven);
                case "default" or "d":
                {
                    bool boolean = Truthy(Arg(1, "boolean", false));
                    return v is JinjaUndefined || (boolean && !Truthy(v)) ? Arg(0, "default_value", string.Empty) : v;
                }

                case "first":
                    return Iterate(v, line) is { Count: > 0 } f ? f[0] : new JinjaUndefined("first");
                case "last":
                    return Iterate(v, line) is { Count: > 0 } l3 ? l3[^1] : new JinjaUndefined("last");
                case "list":
                    return Iterate(v, line).ToList();
                case "reverse":
                    return v is string rs ? string.Concat(StringElements(rs).Reverse()) : Enumerable.Reverse(Iterate(v, line)).ToList();
                case "unique":
                {
                    var result = new List<object?>();
                    foreach (object? x in Iterate(v, line))
                    {
                        if (!result.Any(r => PyEquals(r, x)))
                        {
                            result.Add(x);
                        }
                    }

                    return result;
                }

                case "sort":
                {
                    string? attr = Arg(2, "attribute") is object at ? Str(at) : null;
                    var items = Iterate(v, line).ToList();
                    items.Sort((x, y) => Compare(attr is null ? x : GetAttr(x, attr, line), attr is null ? y : GetAttr(y, attr, line)));
                    return Truthy(Arg(0, "reverse", false)) ? Enumerable.Reverse(items).ToList() : items;
                }

                case "items":
                    return v is OrderedDictionary<string, object?> d2 ? Method(d2, "items", line)([], []) : v is JinjaUndefined ? new List<object?>() : throw Error(line, "items filter needs a mapping");
                case "dictsort":
                    return v is OrderedDictionary<string, object?> d3
                        ? d3.OrderBy(kv => kv.Key, StringComparer.Ordinal).Select(kv => (object?)new List<object?> { kv.Key, kv.Value }).ToList()
                        : throw Error(line, "dictsort filter needs a mapping");
                case "join":
                {
                    string? attr = Arg(1, "attribute") is object at ? Str(at) : null;
                    return string.Join(Str(Arg(0, "d", string.Empty)), Iterate(v, line).Select(x => Str(attr is null ? x : GetAttr(x, attr, line))));
                }

                case "map":
                {
                    if (kw.TryGetValue("attribute", out object? attribute))
                    {
                        return Iterate(v, line).Select(x => GetAttr(x, Str(attribute), line) is JinjaUndefined && kw.TryGetValue("default", out object? dv) ? dv : GetAttr(x, Str(attribute), line)).ToList();
                    }

                    string filter = Str(a[0]);
                    return Iterate(v, line).Select(x => ApplyFilter(filter, x, a.Skip(1).ToList(), [], line)).ToList();
                }

                case "select" or "reject":
                {
                    bool keep = name == "select";
                    return Iterate(v, line).Where(x => (a.Count == 0 ? Truthy(x) : ApplyTest(Str(a[0]), x, a.Skip(1).ToList(), line)) == keep).ToList();
                }

                case "selectattr" or "rejectattr":
                {
                    bool keep = name == "selectattr";
                    string attr = Str(a[0]);
                    return Iterate(v, line).Where(x =>
                    {
                        object? value = GetAttr(x, attr, line);
                        return (a.Count < 2 ? Truthy(value) : ApplyTest(Str(a[1]), value, a.Skip(2).ToList(), line)) == keep;
                    }).ToList();
                }

                case "indent":
                {
                    object? width = Arg(0, "width", 4L);
                    string pad = width is string ws ? ws : new string(' ', (int)ToLong(width));
                    bool first = Truthy(Arg(1, "first", false)), blank = Truthy(Arg(2, "blank", false));
                    string[] lines = Str(v).Split('\n');
                    for (int i = 0; i < lines.Length; i++)
                    {
                        if ((i > 0 || first) && (blank || lines[i].Length > 0))
                        {
                            lines[i] = pad + lines[i];
                        }
                    }

                    return string.Join('\n', lines);
                }

                case "wordcount":
                    return (long)Split(Str(v), null, -1).Count;
                case "sum":
                    return Iterate(v, line).Aggregate((object?)0L, (acc, x) => acc is long l4 && x is long l5 ? l4 + l5 : ToDouble(acc) + ToDouble(x));
                case "min" or "max":
                {
                    var items = Iterate(v, line);
                    if (items.Count == 0)
                    {
                        return new JinjaUndefined(name);
                    }

                    object? best = items[0];
                    foreach (object? x in items.Skip(1))
                    {
                        if ((Compare(x, best) < 0) == (name == "min") && Compare(x, best) != 0)
                        {
                            best = x;
                        }
                    }

                    return best;
                }

                default:
                    throw Error(line, $"no filter named '{name}'");
            }
        }

        private bool ApplyTest(string name, object? v, List<object?> a, int line) => name switch
        {
            "defined" => v is not JinjaUndefined,
            "undefined" => v is JinjaUndefined,
            "none" => v is null,
            "string" => v is string,
            "mapping" => v is OrderedDictionary<string, object?>,
            "iterable" => v is string or List<object?> or OrderedDictionary<string, object?> or JinjaUndefined,
            "sequence" => v is string or List<object?> or OrderedDictionary<string, object?> or JinjaUndefined,
            "number" => v is long or double,
            "integer" => v is long,
            "float" => v is double,
            "boolean" => v is bool,
            "true" => v is true,
            "false" => v is false,
            "callable" => v is JinjaCallable,
            "equalto" or "eq" or "==" or "sameas" => PyEquals(v, a[0]),
            "ne" or "!=" => !PyEquals(v, a[0]),
            "gt" or ">" => Compare(v, a[0]) > 0,
            "ge" or ">=" => Compare(v, a[0]) >= 0,
            "lt" or "<" => Compare(v, a[0]) < 0,
            "le" or "<=" => Compare(v, a[0]) <= 0,
            "in" => Contains(a[0], v, line),
            "divisibleby" => ToLong(v) % ToLong(a[0]) == 0,
            "even" => ToLong(v) % 2 == 0,
            "odd" => ToLong(v) % 2 != 0,
            "lower" => v is string s && s == s.ToLowerInvariant(),
            "upper" => v is string s2 && s2 == s2.ToUpperInvariant(),
            _ => throw Error(line, $"no test named '{name}'"),
        };
    }
}
