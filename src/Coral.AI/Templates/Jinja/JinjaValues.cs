using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Coral.AI;

/// <summary>Jinja's default Undefined: prints as '', is falsy, iterates as empty; attribute access or arithmetic fails.</summary>
internal sealed class JinjaUndefined
{
    public JinjaUndefined(string name) => Name = name;

    public string Name { get; }
}

/// <summary>The mutable object <c>namespace()</c> returns.</summary>
internal sealed class JinjaNamespace
{
    public Dictionary<string, object?> Values { get; } = new(StringComparer.Ordinal);
}

/// <summary>A callable value: a global, a bound method or a macro.</summary>
internal delegate object? JinjaCallable(List<object?> args, Dictionary<string, object?> kwargs);

/// <summary>Python value semantics for the template engine: truth, str/repr, equality, ordering, json.dumps.</summary>
internal static class JinjaValues
{
    public static bool Truthy(object? v) => v switch
    {
        null or JinjaUndefined => false,
        bool b => b,
        long l => l != 0,
        double d => d != 0,
        string s => s.Length > 0,
        List<object?> l => l.Count > 0,
        OrderedDictionary<string, object?> d => d.Count > 0,
        _ => true,
    };

    /// <summary>Python <c>str(v)</c> (Undefined prints as '').</summary>
    public static string Str(object? v) => v switch
    {
        string s => s,
        JinjaUndefined => string.Empty,
        _ => Repr(v),
    };

    /// <summary>Python <c>repr(v)</c>.</summary>
    public static string Repr(object? v) => v switch
    {
        null => "None",
        bool b => b ? "True" : "False",
        long l => l.ToString(CultureInfo.InvariantCulture),
        double d => FormatFloat(d),
        string s => "'" + s.Replace("\\", "\\\\").Replace("'", "\\'").Replace("\n", "\\n").Replace("\t", "\\t").Replace("\r", "\\r") + "'",
        List<object?> l => "[" + string.Join(", ", l.Select(Repr)) + "]",
        OrderedDictionary<string, object?> d => "{" + string.Join(", ", d.Select(kv => Repr(kv.Key) + ": " + Repr(kv.Value))) + "}",
        JinjaUndefined => string.Empty,
        JinjaNamespace => "<Namespace>",
        _ => v.ToString() ?? string.Empty,
    };

    /// <summary>Python's float repr: shortest round-trip digits, exponent form below 1e-4 and from 1e16.</summary>
    public static string FormatFloat(double d)
    {
        if (double.IsNaN(d))
        {
            return "nan";
        }

        if (double.IsInfinity(d))
        {
            return d > 0 ? "inf" : "-inf";
        }

        if (d == 0)
        {
            return double.IsNegative(d) ? "-0.0" : "0.0";
        }

        // .NET's "R" gives the shortest round-trip digits; re-layout them the way Python's repr does.
        string r = Math.Abs(d).ToString("R", CultureInfo.InvariantCulture);
        int e = 0;
        int ei = r.IndexOf('E');
        if (ei >= 0)
        {
            e = int.Parse(r[(ei + 1)..], CultureInfo.InvariantCulture);
            r = r[..ei];
        }

        int dot = r.IndexOf('.');
        string intPart = dot < 0 ? r : r[..dot], frac = dot < 0 ? string.Empty : r[(dot + 1)..];
        int exp;
        if (intPart.TrimStart('0').Length > 0)
        {
            exp = intPart.TrimStart('0').Length - 1 + e;
        }
        else
        {
            exp = -(frac.Length - frac.TrimStart('0').Length + 1) + e;
        }

        string digits = (intPart + frac).TrimStart('0').TrimEnd('0');
        if (digits.Length == 0)
        {
            digits = "0";
        }

        string sign = d < 0 ? "-" : string.Empty;
        if (exp < -4 || exp >= 16)
        {
            string mant = digits.Length == 1 ? digits : digits[0] + "." + digits[1..];
            return $"{sign}{mant}e{(exp < 0 ? "-" : "+")}{Math.Abs(exp):D2}";
        }

        if (exp < 0)
        {
            return sign + "0." + new string('0', -exp - 1) + digits;
        }

        if (digits.Length <= exp + 1)
        {
            return sign + digits + new string('0', exp + 1 - digits.Length) + ".0";
        }

        return sign + digits[..(exp + 1)] + "." + digits[(exp + 1)..];
    }

    public static bool PyEquals(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return ToDouble(a) == ToDouble(b);
        }

        return (a, b) switch
        {
            (null, null) => true,
            (JinjaUndefined, JinjaUndefined) => true,
            (string x, string y) => x == y,
            (List<object?> x, List<object?> y) => x.Count == y.Count && x.Zip(y).All(p => PyEquals(p.First, p.Second)),
            (OrderedDictionary<string, object?> x, OrderedDictionary<string, object?> y) =>
                x.Count == y.Count && x.All(kv => y.TryGetValue(kv.Key, out object? o) && PyEquals(kv.Value, o)),
            _ => ReferenceEquals(a, b),
        };
    }

    public static int Compare(object? a, object? b)
    {
        if (IsNumber(a) && IsNumber(b))
        {
            return ToDouble(a).CompareTo(ToDouble(b));
        }

        if (a is string x && b is string y)
        {
            return string.CompareOrdinal(x, y);
        }

        throw new ChatTemplateException($"'<' not supported between instances of '{TypeName(a)}' and '{TypeName(b)}'.");
    }

    public static bool IsNumber(object? v) => v is long or double or bool;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new ChatTemplateException($"expected a number, got '{TypeName(v)}'."),
    };

    public static string TypeName(object? v) => v switch
    {
        null => "NoneType",
        bool => "bool",
        long => "int",
        double => "float",
        string => "str",
        List<object?> => "list",
        OrderedDictionary<string, object?> => "dict",
        JinjaUndefined => "Undefined",
        JinjaNamespace => "Namespace",
        _ => v.GetType().Name,
    };

    /// <summary>Converts a JSON value to a template value (objects keep their key order).</summary>
    public static object? FromJson(JsonNode? node) => node switch
    {
        null => null,
        JsonObject o => new OrderedDictionary<string, object?>(o.Select(kv => KeyValuePair.Create(kv.Key, FromJson(kv.Value)))),
        JsonArray a => a.Select(FromJson).ToList(),
        JsonValue v when v.TryGetValue(out bool b) => b,
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonValue v when v.TryGetValue(out long l) && !v.ToJsonString().Contains('.') && !v.ToJsonString().Contains('e', StringComparison.OrdinalIgnoreCase) => l,
        JsonValue v => v.GetValue<double>(),
        _ => throw new ChatTemplateException($"unsupported JSON value {node.ToJsonString()}."),
    };

    /// <summary>Python's <c>json.dumps(v, ensure_ascii=False, indent=indent)</c>, as transformers' <c>tojson</c>.</summary>
    public static string ToJson(object? v, int? indent)
    {
        var sb = new StringBuilder();
        WriteJson(sb, v, indent, 0);
        return sb.ToString();
    }

    private static void WriteJson(StringBuilder sb, object? v, int? indent, int level)
    {
        switch (v)
        {
            case null:
                sb.Append("null");
                break;
            case JinjaUndefined:
                throw new ChatTemplateException("Object of type Undefined is not JSON serializable.");
            case bool b:
                sb.Append(b ? "true" : "false");
                break;
            case long l:
                sb.Append(l.ToString(CultureInfo.InvariantCulture));
                break;
            case double d:
                sb.Append(double.IsNaN(d) ? "NaN" : double.IsInfinity(d) ? (d > 0 ? "Infinity" : "-Infinity") : FormatFloat(d));
                break;
            case string s:
                WriteJsonString(sb, s);
                break;
            case List<object?> list:
                WriteContainer(sb, '[', ']', list.Count, indent, level, i => WriteJson(sb, list[i], indent, level + 1));
                break;
            case OrderedDictionary<string, object?> dict:
                WriteContainer(sb, '{', '}', dict.Count, indent, level, i =>
                {
                    var (key, value) = dict.GetAt(i);
                    WriteJsonString(sb, key);
                    sb.Append(": ");
                    WriteJson(sb, value, indent, level + 1);
                });
                break;
            default:
                throw new ChatTemplateException($"Object of type {TypeName(v)} is not JSON serializable.");
        }
    }

    private static void WriteContainer(StringBuilder sb, char open, char close, int count, int? indent, int level, Action<int> item)
    {
        sb.Append(open);
        if (count == 0)
        {
            sb.Append(close);
            return;
        }

        for (int i = 0; i < count; i++)
        {
            if (indent is int n)
            {
                sb.Append(i == 0 ? "\n" : ",\n").Append(' ', n * (level + 1));
            }
            else if (i > 0)
            {
                sb.Append(", ");
            }

            item(i);
        }

        if (indent is int m)
        {
            sb.Append('\n').Append(' ', m * level);
        }

        sb.Append(close);
    }

    private static void WriteJsonString(StringBuilder sb, string s)
    {
        sb.Append('"');
        foreach (char c in s)
        {
            switch (c)
            {
                case '"': sb.Append("\\\""); break;
                case '\\': sb.Append("\\\\"); break;
                case '\n': sb.Append("\\n"); break;
                case '\r': sb.Append("\\r"); break;
                case '\t': sb.Append("\\t"); break;
                case '\b': sb.Append("\\b"); break;
                case '\f': sb.Append("\\f"); break;
                default:
                    if (c < 0x20)
                    {
                        sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                    }
                    else
                    {
                        sb.Append(c);
                    }

                    break;
            }
        }

        sb.Append('"');
    }

    /// <summary>Python <c>str.strip()</c> whitespace (Unicode White_Space, which includes U+00A0 and U+3000).</summary>
    public static bool IsPyWhitespace(char c) => char.IsWhiteSpace(c) || c is '\u001c' or '\u001d' or '\u001e' or '\u001f';

    public static string Strip(string s, string? chars, bool left, bool right)
    {
        int a = 0, b = s.Length;
        Func<char, bool> strip = chars is null ? IsPyWhitespace : c => chars.Contains(c);
        if (left)
        {
            while (a < b && strip(s[a]))
            {
                a++;
            }
        }

        if (right)
        {
            while (b > a && strip(s[b - 1]))
            {
                b--;
            }
        }

        return s[a..b];
    }

    /// <summary>Python <c>str.title()</c>.</summary>
    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool prevCased = false;
        foreach (char c in s)
        {
            sb.Append(prevCased ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            prevCased = char.IsLetter(c);
        }

        return sb.ToString();
    }

    /// <summary>Expands <c>%x</c> directives through <paramref name="directive"/> (printf-style formats and strftime).</summary>
    public static string ExpandPercent(string format, Func<char, string> directive)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length)
            {
                sb.Append(format[i]);
                continue;
            }

            char f = format[++i];
            sb.Append(f == '%' ? "%" : directive(f));
        }

        return sb.ToString();
    }

    /// <summary><c>strftime</c> for the formats chat templates use, in the C locale.</summary>
    public static string Strftime(DateTime t, string format) => ExpandPercent(format, f => f switch
    {
        'd' => t.Day.ToString("D2", CultureInfo.InvariantCulture),
        'm' => t.Month.ToString("D2", CultureInfo.InvariantCulture),
        'Y' => t.Year.ToString(CultureInfo.InvariantCulture),
        'y' => (t.Year % 100).ToString("D2", CultureInfo.InvariantCulture),
        'H' => t.Hour.ToString("D2", CultureInfo.InvariantCulture),
        'I' => ((t.Hour + 11) % 12 + 1).ToString("D2", CultureInfo.InvariantCulture),
        'M' => t.Minute.ToString("D2", CultureInfo.InvariantCulture),
        'S' => t.Second.ToString("D2", CultureInfo.InvariantCulture),
        'p' => t.Hour < 12 ? "AM" : "PM",
        'b' => CultureInfo.InvariantCulture.DateTimeFormat.GetAbbreviatedMonthName(t.Month),
        'B' => CultureInfo.InvariantCulture.DateTimeFormat.GetMonthName(t.Month),
        'a' => CultureInfo.InvariantCulture.DateTimeFormat.GetAbbreviatedDayName(t.DayOfWeek),
        'A' => CultureInfo.InvariantCulture.DateTimeFormat.GetDayName(t.DayOfWeek),
        'j' => t.DayOfYear.ToString("D3", CultureInfo.InvariantCulture),
        'e' => t.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2),
        _ => "%" + f,
    });
}
