using System.Globalization;
using System.Text;

namespace Coral.AI;

/// <summary>Kinds of template tokens.</summary>
internal enum JinjaTokenKind
{
    Text,
    VariableStart,
    VariableEnd,
    BlockStart,
    BlockEnd,
    Name,
    String,
    Integer,
    Float,
    Operator,
    End,
}

/// <summary>One token with its source line (for error messages).</summary>
internal readonly record struct JinjaToken(JinjaTokenKind Kind, string Value, int Line)
{
    public bool Is(JinjaTokenKind kind, string value) => Kind == kind && Value == value;

    public override string ToString() => Kind == JinjaTokenKind.End ? "end of template" : $"'{Value}'";
}

/// <summary>
/// Splits a template into text and tag tokens with Jinja's whitespace rules as transformers configures them:
/// <c>trim_blocks</c> (the newline after a block or comment tag is dropped), <c>lstrip_blocks</c> (spaces and tabs
/// before a block or comment tag on its own line are dropped), <c>-</c> modifiers, <c>{% raw %}</c>, and one trailing
/// newline removed (<c>keep_trailing_newline = False</c>).
/// </summary>
internal static class JinjaLexer
{
    private static readonly string[] Operators =
        ["**", "//", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|", "="];

    public static List<JinjaToken> Tokenize(string source)
    {
        if (source.EndsWith('\n'))
        {
            source = source.EndsWith("\r\n", StringComparison.Ordinal) ? source[..^2] : source[..^1];
        }

        var tokens = new List<JinjaToken>();
        int pos = 0, line = 1;
        bool stripNextLeading = false;   // a '-' on the previous tag's end
        bool trimNextNewline = false;    // trim_blocks after a block/comment tag
        while (pos < source.Length)
        {
            int start = FindTagStart(source, pos);
            string text = source[pos..(start < 0 ? source.Length : start)];
            if (stripNextLeading)
            {
                text = text.TrimStart();
            }
            else if (trimNextNewline)
            {
                text = text.StartsWith("\r\n", StringComparison.Ordinal) ? text[2..] : text.StartsWith('\n') ? text[1..] : text;
            }

            stripNextLeading = trimNextNewline = false;
            if (start < 0)
            {
                AddText(tokens, text, line);
                break;
            }

            char kind = source[start + 1];                                  // '{', '%' or '#'
            char modifier = start + 2 < source.Length ? source[start + 2] : '\0';
            if (modifier == '-')
            {
                text = text.TrimEnd();
            }
            else if (kind != '{' && modifier != '+')
            {
                // lstrip_blocks: drop the spaces/tabs between the start of the line and a block or comment tag.
                int k = start;
                while (k > pos && source[k - 1] is ' ' or '\t')
                {
                    k--;
                }

                if ((k == 0 || source[k - 1] == '\n') && start - k <= text.Length)
                {
                    text = text[..^(start - k)];
                }
            }

            AddText(tokens, text, line);
            line += Count(source, pos, start);
            int inner = start + 2 + (modifier is '-' or '+' ? 1 : 0);
            if (kind == '#')
            {
                int close = source.IndexOf("#}", inner, StringComparison.Ordinal);
                if (close < 0)
                {
                    throw new ChatTemplateException($"line {line}: unclosed comment.");
                }

                line += Count(source, start, close + 2);
                (stripNextLeading, trimNextNewline) = source[close - 1] == '-' ? (true, false) : (false, true);
                pos = close + 2;
                continue;
            }

            string closer = kind == '{' ? "}}" : "%}";
            tokens.Add(new JinjaToken(kind == '{' ? JinjaTokenKind.VariableStart : JinjaTokenKind.BlockStart, kind == '{' ? "{{" : "{%", line));
            pos = LexExpression(source, inner, closer, tokens, ref line, out bool dashClose);
            tokens.Add(new JinjaToken(kind == '{' ? JinjaTokenKind.VariableEnd : JinjaTokenKind.BlockEnd, closer, line));
            stripNextLeading = dashClose;
            trimNextNewline = !dashClose && kind == '%';

            if (kind == '%' && IsRawStart(tokens))
            {
                tokens.RemoveRange(tokens.Count - 3, 3);
                pos = LexRaw(source, pos, tokens, ref line, ref stripNextLeading, ref trimNextNewline);
            }
        }

        tokens.Add(new JinjaToken(JinjaTokenKind.End, string.Empty, line));
        return tokens;
    }

    private static int FindTagStart(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
        {
            if (s[i + 1] is '{' or '%' or '#')
            {
                return i;
            }
        }

        return -1;
    }

    private static void AddText(List<JinjaToken> tokens, string text, int line)
    {
        if (text.Length > 0)
        {
            tokens.Add(new JinjaToken(JinjaTokenKind.Text, text, line));
        }
    }

    private static int Count(string s, int from, int to)
    {
        int n = 0;
        for (int i = from; i < to && i < s.Length; i++)
        {
            if (s[i] == '\n')
            {
                n++;
            }
        }

        return n;
    }

    private static bool IsRawStart(List<JinjaToken> tokens) =>
        tokens.Count >= 3 && tokens[^2].Is(JinjaTokenKind.Name, "raw") && tokens[^3].Kind == JinjaTokenKind.BlockStart;

    /// <summary>Copies text verbatim up to <c>{% endraw %}</c>.</summary>
    private static int LexRaw(string s, int pos, List<JinjaToken> tokens, ref int line, ref bool stripNextLeading, ref bool trimNextNewline)
    {
        int search = pos;
        while (true)
        {
            int tag = s.IndexOf("{%", search, StringComparison.Ordinal);
            if (tag < 0)
            {
                throw new ChatTemplateException($"line {line}: missing endraw.");
            }

            int i = tag + 2;
            bool dash = i < s.Length && s[i] == '-';
            if (dash || (i < s.Length && s[i] == '+'))
            {
                i++;
            }

            while (i < s.Length && char.IsWhiteSpace(s[i]))
            {
                i++;
            }

            if (string.CompareOrdinal(s, i, "endraw", 0, 6) != 0)
            {
                search = tag + 2;
                continue;
            }

            int close = s.IndexOf("%}", i, StringComparison.Ordinal);
            string text = s[pos..tag];
            if (stripNextLeading)
            {
                text = text.TrimStart();
            }
            else if (trimNextNewline && text.StartsWith('\n'))
            {
                text = text[1..];
            }

            if (dash)
            {
                text = text.TrimEnd();
            }

            AddText(tokens, text, line);
            line += Count(s, pos, close + 2);
            bool dashClose = s[close - 1] == '-';
            (stripNextLeading, trimNextNewline) = (dashClose, !dashClose);
            return close + 2;
        }
    }

    private static int LexExpression(string s, int pos, string closer, List<JinjaToken> tokens, ref int line, out bool dashClose)
    {
        while (true)
        {
            while (pos < s.Length && char.IsWhiteSpace(s[pos]))
            {
                if (s[pos] == '\n')
                {
                    line++;
                }

                pos++;
            }

            if (pos >= s.Length)
            {
                throw new ChatTemplateException($"line {line}: unclosed tag, expected '{closer}'.");
            }

            if (s[pos] == '-' && string.CompareOrdinal(s, pos + 1, closer, 0, 2) == 0)
            {
                dashClose = true;
                return pos + 3;
            }

            if (s[pos] == '+' && string.CompareOrdinal(s, pos + 1, closer, 0, 2) == 0)
            {
                dashClose = false;
                return pos + 3;
            }

            if (string.CompareOrdinal(s, pos, closer, 0, 2) == 0)
            {
                dashClose = false;
                return pos + 2;
            }

            char c = s[pos];
            if (c is '\'' or '"')
            {
                pos = LexString(s, pos, tokens, line);
            }
            else if (char.IsDigit(c))
            {
                int start = pos;
                while (pos < s.Length && (char.IsDigit(s[pos]) || s[pos] == '_'))
                {
                    pos++;
                }

                bool isFloat = false;
                if (pos + 1 < s.Length && s[pos] == '.' && char.IsDigit(s[pos + 1]))
                {
                    isFloat = true;
                    pos++;
                    while (pos < s.Length && char.IsDigit(s[pos]))
                    {
                        pos++;
                    }
                }

                if (pos < s.Length && s[pos] is 'e' or 'E')
                {
                    isFloat = true;
                    pos++;
                    if (s[pos] is '+' or '-')
                    {
                        pos++;
                    }

                    while (pos < s.Length && char.IsDigit(s[pos]))
                    {
                        pos++;
                    }
                }

                tokens.Add(new JinjaToken(isFloat ? JinjaTokenKind.Float : JinjaTokenKind.Integer, s[start..pos].Replace("_", string.Empty), line));
            }
            else if (char.IsLetter(c) || c == '_')
            {
                int start = pos;
                while (pos < s.Length && (char.IsLetterOrDigit(s[pos]) || s[pos] == '_'))
                {
                    pos++;
                }

                tokens.Add(new JinjaToken(JinjaTokenKind.Name, s[start..pos], line));
            }
            else
            {
                string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(s, pos, o, 0, o.Length) == 0);
                if (op is null)
                {
                    throw new ChatTemplateException($"line {line}: unexpected character '{c}'.");
                }

                tokens.Add(new JinjaToken(JinjaTokenKind.Operator, op, line));
                pos += op.Length;
            }
        }
    }

    private static int LexString(string s, int pos, List<JinjaToken> tokens, int line)
    {
        char quote = s[pos++];
        var sb = new StringBuilder();
        while (true)
        {
            if (pos >= s.Length)
            {
                throw new ChatTemplateException($"line {line}: unterminated string.");
            }

            char c = s[pos++];
            if (c == quote)
            {
                break;
            }

            if (c != '\\' || pos >= s.Length)
            {
                sb.Append(c);
                continue;
            }

            char e = s[pos++];
            switch (e)
            {
                case 'n': sb.Append('\n'); break;
                case 't': sb.Append('\t'); break;
                case 'r': sb.Append('\r'); break;
                case '0': sb.Append('\0'); break;
                case 'b': sb.Append('\b'); break;
                case 'f': sb.Append('\f'); break;
                case '\\': sb.Append('\\'); break;
                case '\'': sb.Append('\''); break;
                case '"': sb.Append('"'); break;
                case '\n': break;
                case 'u' when pos + 4 <= s.Length:
                    sb.Append((char)int.Parse(s.AsSpan(pos, 4), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    pos += 4;
                    break;
                case 'x' when pos + 2 <= s.Length:
                    sb.Append((char)int.Parse(s.AsSpan(pos, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture));
                    pos += 2;
                    break;
                default: sb.Append('\\').Append(e); break;
            }
        }

        tokens.Add(new JinjaToken(JinjaTokenKind.String, sb.ToString(), line));
        return pos;
    }
}
