using System.Text;
using System.Text.Json;

namespace Coral.AI;

/// <summary>
/// A byte-level JSON recogniser, optionally driven by a JSON schema (type, properties, required, enum, items, const),
/// that says which next bytes keep the output a prefix of a valid document. It is immutable-by-copy: <see cref="Clone"/>
/// gives an independent state, so a token can be tried without committing. Strings, numbers, arrays and whitespace are
/// bounded so that constrained generation always finishes.
/// </summary>
internal sealed class JsonConstraint
{
    private const int MaxWhitespace = 2;
    private const int DefaultMaxString = 128;
    private const int MaxNumberChars = 17;
    private const int MaxIntegerDigits = 9;   // integers stay within int32 unless the schema says otherwise
    private const int DefaultMaxItems = 16;

    private List<Frame> _stack = [];
    private int _whitespace;
    private bool _done;

    private JsonConstraint()
    {
    }

    /// <summary>Creates a recogniser for one value matching <paramref name="schema"/> (null = any JSON value).</summary>
    public static JsonConstraint Create(JsonElement? schema)
    {
        var c = new JsonConstraint();
        c._stack.Add(Frame.Value(schema));
        return c;
    }

    public bool IsComplete => _done;

    /// <summary>Gets whether the text so far is a complete document (a top-level number may still grow).</summary>
    public bool CanEnd => _done || (_stack.Count == 1 && _stack[0].Kind == FrameKind.Number && _stack[0].State is 2 or 3 or 5 or 8);

    public JsonConstraint Clone() => new() { _stack = _stack.Select(f => f.Copy()).ToList(), _whitespace = _whitespace, _done = _done };

    /// <summary>Feeds bytes; false (and an undefined state) when they leave the language.</summary>
    public bool Advance(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            if (!Step(b))
            {
                return false;
            }
        }

        return true;
    }

    private bool Step(byte b)
    {
        if (_done)
        {
            return false;
        }

        Frame f = _stack[^1];
        switch (f.Kind)
        {
            case FrameKind.Value:
                return StartValue(f, b);
            case FrameKind.String:
                return StringByte(f, b);
            case FrameKind.Number:
                return NumberByte(f, b);
            case FrameKind.Literal when f.Choices is not null:
            {
                var remaining = f.Choices.Where(c => f.Position < c.Length && c[f.Position] == b).ToList();
                if (remaining.Count > 0)
                {
                    f.Choices = remaining;
                    f.Position++;
                    if (remaining.Count == 1 && remaining[0].Length == f.Position)
                    {
                        Pop();
                    }

                    return true;
                }

                if (f.Choices.Any(c => c.Length == f.Position))
                {
                    Pop();
                    return _stack.Count > 0 ? Step(b) : Whitespace(b);
                }

                return false;
            }

            case FrameKind.Literal:
                if (f.Position < f.Literal!.Length && f.Literal[f.Position] == b)
                {
                    f.Position++;
                    if (f.Position == f.Literal.Length)
                    {
                        Pop();
                    }

                    return true;
                }

                return false;
            case FrameKind.Object:
                return ObjectByte(f, b);
            case FrameKind.Array:
                return ArrayByte(f, b);
            default:
                return false;
        }
    }

    private bool Whitespace(byte b)
    {
        if (b is (byte)' ' or (byte)'\n' or (byte)'\t' or (byte)'\r' && _whitespace < MaxWhitespace)
        {
            _whitespace++;
            return true;
        }

        return false;
    }

    private bool StartValue(Frame f, byte b)
    {
        if (Whitespace(b))
        {
            return true;
        }

        _whitespace = 0;
        JsonElement? s = f.Schema;
        // enum / const: the value's serialized text must be one of the alternatives.
        if (s is { } schema && (schema.TryGetProperty("enum", out JsonElement en) || schema.TryGetProperty("const", out en)))
        {
            var options = en.ValueKind == JsonValueKind.Array ? en.EnumerateArray().Select(e => e.GetRawText()).ToList() : [en.GetRawText()];
            Replace(Frame.Choice(options.Select(o => Encoding.UTF8.GetBytes(o)).ToList()));
            return Step(b);
        }

        HashSet<string> types = Types(s);
        bool Allows(string t) => types.Count == 0 || types.Contains(t);
        switch (b)
        {
            case (byte)'{' when Allows("object"):
                Replace(Frame.Object(s));
                return true;
            case (byte)'[' when Allows("array"):
                Replace(Frame.Array(s));
                return true;
            case (byte)'"' when Allows("string"):
                Replace(Frame.String(MaxLength(s)));
                return true;
            case (byte)'t' or (byte)'f' when Allows("boolean"):
                Replace(Frame.Lit(b == 't' ? "true"u8.ToArray() : "false"u8.ToArray()));
                return Step(b);
            case (byte)'n' when Allows("null"):
                Replace(Frame.Lit("null"u8.ToArray()));
                return Step(b);
            case (byte)'-' or (>= (byte)'0' and <= (byte)'9') when Allows("number") || Allows("integer"):
                Replace(Frame.Number(integer: !Allows("number")));
                return Step(b);
            default:
                return false;
        }
    }

    private bool StringByte(Frame f, byte b)
    {
        if (f.Escape > 0)
        {
            if (f.Escape == 1)
            {
                if (b == 'u')
                {
                    f.Escape = 2;
                    return true;
                }

                f.Escape = 0;
                return b is (byte)'"' or (byte)'\\' or (byte)'/' or (byte)'b' or (byte)'f' or (byte)'n' or (byte)'r' or (byte)'t';
            }

            if (!Uri.IsHexDigit((char)b))
            {
                return false;
            }

            f.Escape = f.Escape == 5 ? 0 : f.Escape + 1;
            return true;
        }

        if (b == '"')
        {
            if (f.Keys is not null && !f.Keys.Any(k => k.AsSpan().SequenceEqual(f.Text.ToArray())))
            {
                return false;   // a key must be one of the allowed property names
            }

            string value = Encoding.UTF8.GetString(f.Text.ToArray());
            Pop();
            if (_stack.Count > 0 && _stack[^1].Kind == FrameKind.Object)
            {
                _stack[^1].CurrentKey ??= value;
            }

            return true;
        }

        if (b < 0x20 || f.Text.Count >= f.MaxLength)
        {
            return false;
        }

        if (f.Keys is not null)
        {
            var prefix = f.Text.Append(b).ToArray();
            if (!f.Keys.Any(k => k.AsSpan().StartsWith(prefix)))
            {
                return false;
            }
        }

        if (b == '\\')
        {
            f.Escape = 1;
        }

        f.Text.Add(b);
        return true;
    }

    private bool NumberByte(Frame f, byte b)
    {
        // States: 0 start, 1 after '-', 2 leading zero, 3 int digits, 4 after '.', 5 frac digits, 6 after e, 7 after e sign, 8 exp digits.
        int next = (f.State, b) switch
        {
            (0, (byte)'-') => 1,
            (0 or 1, (byte)'0') => 2,
            (0 or 1, >= (byte)'1' and <= (byte)'9') => 3,
            (3, >= (byte)'0' and <= (byte)'9') => 3,
            (2 or 3, (byte)'.') when !f.Integer => 4,
            (4 or 5, >= (byte)'0' and <= (byte)'9') => 5,
            (2 or 3 or 5, (byte)'e' or (byte)'E') when !f.Integer => 6,
            (6, (byte)'+' or (byte)'-') => 7,
            (6 or 7 or 8, >= (byte)'0' and <= (byte)'9') => 8,
            _ => -1,
        };
        int limit = f.Integer ? MaxIntegerDigits + (f.State == 1 || f.Escape == 1 ? 1 : 0) : MaxNumberChars;
        if (next == 1)
        {
            f.Escape = 1;   // remembers the sign: it does not count as a digit
        }

        if (next >= 0 && ++f.Position <= limit)
        {
            f.State = next;
            return true;
        }

        if (f.State is 2 or 3 or 5 or 8)
        {
            Pop();                      // the number ended; this byte belongs to the container
            return _stack.Count > 0 ? Step(b) : Whitespace(b);
        }

        return false;
    }

    private bool ObjectByte(Frame f, byte b)
    {
        // States: 0 expect key or '}', 1 expect ':', 2 expect ',' or '}', 3 expect key (after ',').
        switch (f.State)
        {
            case 0 or 3:
                if (Whitespace(b))
                {
                    return true;
                }

                _whitespace = 0;
                if (b == '}' && f.State == 0 && MissingRequired(f).Count == 0)
                {
                    Pop();
                    return true;
                }

                if (b == '"')
                {
                    List<byte[]>? keys = AllowedKeys(f);
                    if (keys is { Count: 0 })
                    {
                        return false;
                    }

                    f.CurrentKey = null;
                    f.State = 1;
                    _stack.Add(Frame.String(DefaultMaxString, keys));
                    return true;
                }

                return false;
            case 1:
                if (Whitespace(b))
                {
                    return true;
                }

                _whitespace = 0;
                if (b != ':')
                {
                    return false;
                }

                f.Seen.Add(f.CurrentKey!);
                f.State = 2;
                _stack.Add(Frame.Value(PropertySchema(f.Schema, f.CurrentKey!)));
                return true;
            default:
                if (Whitespace(b))
                {
                    return true;
                }

                _whitespace = 0;
                if (b == ',' && AllowedKeys(f) is not { Count: 0 })
                {
                    f.State = 3;
                    return true;
                }

                if (b == '}' && MissingRequired(f).Count == 0)
                {
                    Pop();
                    return true;
                }

                return false;
        }
    }

    private bool ArrayByte(Frame f, byte b)
    {
        // States: 0 expect value or ']', 2 expect ',' or ']', 3 expect value (after ',').
        if (Whitespace(b))
        {
            return true;
        }

        _whitespace = 0;
        int maxItems = f.Schema is { } s && s.TryGetProperty("maxItems", out JsonElement mi) && mi.TryGetInt32(out int m) ? m : DefaultMaxItems;
        int minItems = f.Schema is { } s2 && s2.TryGetProperty("minItems", out JsonElement mn) && mn.TryGetInt32(out int n) ? n : 0;
        if (b == ']' && f.State != 3 && f.Position >= minItems)
        {
            Pop();
            return true;
        }

        if (f.State == 2)
        {
            if (b == ',' && f.Position < maxItems)
            {
                f.State = 3;
                return true;
            }

            return false;
        }

        if (f.Position >= maxItems)
        {
            return false;
        }

        f.Position++;
        f.State = 2;
        JsonElement? items = f.Schema is { } s3 && s3.TryGetProperty("items", out JsonElement it) ? it : null;
        _stack.Add(Frame.Value(items));
        return Step(b);
    }

    private static List<string> Required(JsonElement? schema) =>
        schema is { } s && s.TryGetProperty("required", out JsonElement r) && r.ValueKind == JsonValueKind.Array
            ? r.EnumerateArray().Select(e => e.GetString()!).ToList()
            : [];

    private static List<string> MissingRequired(Frame f) => Required(f.Schema).Where(k => !f.Seen.Contains(k)).ToList();

    /// <summary>Property names still allowed (null = any key): declared properties not yet written, required ones first
    /// in declaration order when additionalProperties is false or absent with declared properties.</summary>
    private static List<byte[]>? AllowedKeys(Frame f)
    {
        if (f.Schema is not { } s || !s.TryGetProperty("properties", out JsonElement props) || props.ValueKind != JsonValueKind.Object)
        {
            return null;
        }

        if (s.TryGetProperty("additionalProperties", out JsonElement ap) && ap.ValueKind != JsonValueKind.False)
        {
            return null;
        }

        return props.EnumerateObject().Select(p => p.Name).Where(n => !f.Seen.Contains(n)).Select(Encoding.UTF8.GetBytes).ToList();
    }

    private static JsonElement? PropertySchema(JsonElement? schema, string key)
    {
        if (schema is { } s && s.TryGetProperty("properties", out JsonElement props) && props.TryGetProperty(key, out JsonElement p))
        {
            return p;
        }

        return schema is { } s2 && s2.TryGetProperty("additionalProperties", out JsonElement ap) && ap.ValueKind == JsonValueKind.Object ? ap : null;
    }

    private static HashSet<string> Types(JsonElement? schema)
    {
        if (schema is not { } s || !s.TryGetProperty("type", out JsonElement t))
        {
            return schema is { } s2 && s2.TryGetProperty("properties", out _) ? ["object"] : [];
        }

        return t.ValueKind == JsonValueKind.Array ? t.EnumerateArray().Select(e => e.GetString()!).ToHashSet() : [t.GetString()!];
    }

    private static int MaxLength(JsonElement? schema) =>
        schema is { } s && s.TryGetProperty("maxLength", out JsonElement m) && m.TryGetInt32(out int n) ? Math.Min(n, DefaultMaxString) : DefaultMaxString;

    private void Replace(Frame frame) => _stack[^1] = frame;

    private void Pop()
    {
        _stack.RemoveAt(_stack.Count - 1);
        _whitespace = 0;
        if (_stack.Count == 0)
        {
            _done = true;
        }
    }

    private enum FrameKind
    {
        Value,
        String,
        Number,
        Literal,
        Object,
        Array,
    }

    private sealed class Frame
    {
        public FrameKind Kind { get; init; }

        public JsonElement? Schema { get; init; }

        public int State { get; set; }

        public int Position { get; set; }

        public int Escape { get; set; }

        public bool Integer { get; init; }

        public int MaxLength { get; init; }

        public byte[]? Literal { get; set; }

        public List<byte[]>? Choices { get; set; }

        public List<byte[]>? Keys { get; init; }

        public List<byte> Text { get; init; } = [];

        public HashSet<string> Seen { get; init; } = [];

        public string? CurrentKey { get; set; }

        public static Frame Value(JsonElement? schema) => new() { Kind = FrameKind.Value, Schema = schema };

        public static Frame Object(JsonElement? schema) => new() { Kind = FrameKind.Object, Schema = schema };

        public static Frame Array(JsonElement? schema) => new() { Kind = FrameKind.Array, Schema = schema };

        public static Frame String(int maxLength, List<byte[]>? keys = null) => new() { Kind = FrameKind.String, MaxLength = maxLength, Keys = keys };

        public static Frame Number(bool integer) => new() { Kind = FrameKind.Number, Integer = integer };

        public static Frame Lit(byte[] literal) => new() { Kind = FrameKind.Literal, Literal = literal };

        /// <summary>One of several literal byte strings (enum values): kept as a literal once only one remains possible.</summary>
        public static Frame Choice(List<byte[]> options) => new() { Kind = FrameKind.Literal, Literal = options[0], Choices = options };

        public Frame Copy() => new()
        {
            Kind = Kind, Schema = Schema, State = State, Position = Position, Escape = Escape, Integer = Integer, MaxLength = MaxLength,
            Literal = Literal, Choices = Choices?.ToList(), Keys = Keys, Text = [.. Text], Seen = [.. Seen], CurrentKey = CurrentKey,
        };
    }
}
