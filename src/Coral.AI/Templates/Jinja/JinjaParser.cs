using System.Globalization;

namespace Coral.AI;

/// <summary>An expression node.</summary>
internal abstract record JinjaExpr(int Line);

internal sealed record JLiteral(object? Value, int Line) : JinjaExpr(Line);
internal sealed record JName(string Name, int Line) : JinjaExpr(Line);
internal sealed record JList(List<JinjaExpr> Items, int Line) : JinjaExpr(Line);
internal sealed record JDict(List<(JinjaExpr Key, JinjaExpr Value)> Items, int Line) : JinjaExpr(Line);
internal sealed record JAttr(JinjaExpr Target, string Name, int Line) : JinjaExpr(Line);
internal sealed record JItem(JinjaExpr Target, JinjaExpr Index, int Line) : JinjaExpr(Line);
internal sealed record JSlice(JinjaExpr Target, JinjaExpr? Start, JinjaExpr? Stop, JinjaExpr? Step, int Line) : JinjaExpr(Line);
internal sealed record JCall(JinjaExpr Target, List<JinjaExpr> Args, List<(string Name, JinjaExpr Value)> Kwargs, int Line) : JinjaExpr(Line);
internal sealed record JFilter(JinjaExpr Target, string Name, List<JinjaExpr> Args, List<(string Name, JinjaExpr Value)> Kwargs, int Line) : JinjaExpr(Line);
internal sealed record JTest(JinjaExpr Target, string Name, List<JinjaExpr> Args, bool Negated, int Line) : JinjaExpr(Line);
internal sealed record JUnary(string Op, JinjaExpr Operand, int Line) : JinjaExpr(Line);
internal sealed record JBinary(string Op, JinjaExpr Left, JinjaExpr Right, int Line) : JinjaExpr(Line);
internal sealed record JCondition(JinjaExpr Condition, JinjaExpr Then, JinjaExpr? Else, int Line) : JinjaExpr(Line);

/// <summary>A statement node.</summary>
internal abstract record JinjaNode(int Line);

internal sealed record NText(string Text, int Line) : JinjaNode(Line);
internal sealed record NOutput(JinjaExpr Value, int Line) : JinjaNode(Line);
internal sealed record NIf(List<(JinjaExpr Condition, List<JinjaNode> Body)> Branches, List<JinjaNode>? Else, int Line) : JinjaNode(Line);
internal sealed record NFor(List<string> Targets, JinjaExpr Iterable, JinjaExpr? Filter, List<JinjaNode> Body, List<JinjaNode>? Else, int Line) : JinjaNode(Line);
internal sealed record NSet(List<string> Targets, string? Attribute, JinjaExpr? Value, List<JinjaNode>? Body, int Line) : JinjaNode(Line);
internal sealed record NMacro(string Name, List<(string Name, JinjaExpr? Default)> Parameters, List<JinjaNode> Body, int Line) : JinjaNode(Line);
internal sealed record NCallBlock(JCall Call, List<JinjaNode> Body, int Line) : JinjaNode(Line);
internal sealed record NFilterBlock(string Name, List<JinjaExpr> Args, List<JinjaNode> Body, int Line) : JinjaNode(Line);
internal sealed record NBreak(int Line) : JinjaNode(Line);
internal sealed record NContinue(int Line) : JinjaNode(Line);

/// <summary>Parses template tokens into statement and expression trees (Jinja's grammar and operator precedence).</summary>
internal sealed class JinjaParser
{
    private const int MaxNesting = 200;
    private readonly List<JinjaToken> _t;
    private int _p;
    private int _depth;

    private JinjaParser(List<JinjaToken> tokens) => _t = tokens;

    public static List<JinjaNode> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Tokenize(source));
        List<JinjaNode> body = parser.ParseBody(out string? end);
        if (end is not null)
        {
            throw parser.Error($"unexpected '{end}'");
        }

        return body;
    }

    private JinjaToken Peek => _t[_p];

    private ChatTemplateException Error(string message) => new($"line {Peek.Line}: syntax error: {message} (at {Peek}).");

    private JinjaToken Next() => _t[_p++];

    private bool Accept(JinjaTokenKind kind, string value)
    {
        if (Peek.Is(kind, value))
        {
            _p++;
            return true;
        }

        return false;
    }

    private bool AcceptOp(string op) => Accept(JinjaTokenKind.Operator, op);

    private bool AcceptName(string name) => Accept(JinjaTokenKind.Name, name);

    private void Expect(JinjaTokenKind kind, string value)
    {
        if (!Accept(kind, value))
        {
            throw Error($"expected '{value}'");
        }
    }

    private string ExpectName()
    {
        if (Peek.Kind != JinjaTokenKind.Name)
        {
            throw Error("expected a name");
        }

        return Next().Value;
    }

    /// <summary>Parses nodes until an end tag it does not own; returns that tag's keyword (left unconsumed after it).</summary>
    private List<JinjaNode> ParseBody(out string? endTag, params string[] ends)
    {
        if (_depth > MaxNesting)
        {
            throw Error($"statements nested deeper than {MaxNesting}");
        }

        var nodes = new List<JinjaNode>();
        while (true)
        {
            JinjaToken tok = Peek;
            switch (tok.Kind)
            {
                case JinjaTokenKind.End:
                    endTag = null;
                    if (ends.Length > 0)
                    {
                        throw Error($"missing '{string.Join("' or '", ends)}'");
                    }

                    return nodes;
                case JinjaTokenKind.Text:
                    _p++;
                    nodes.Add(new NText(tok.Value, tok.Line));
                    break;
                case JinjaTokenKind.VariableStart:
                    _p++;
                    nodes.Add(new NOutput(ParseExpression(), tok.Line));
                    Expect(JinjaTokenKind.VariableEnd, "}}");
                    break;
                case JinjaTokenKind.BlockStart:
                    _p++;
                    string keyword = Peek.Kind == JinjaTokenKind.Name ? Peek.Value : throw Error("expected a statement");
                    if (ends.Contains(keyword) || keyword.StartsWith("end", StringComparison.Ordinal) || keyword is "elif" or "else")
                    {
                        if (!ends.Contains(keyword))
                        {
                            throw Error($"unexpected '{keyword}'");
                        }

                        _p++;
                        endTag = keyword;
                        return nodes;
                    }

                    nodes.Add(ParseStatement());
                    break;
                default:
                    throw Error("unexpected token");
            }
        }
    }

    private void EndTag() => Expect(JinjaTokenKind.BlockEnd, "%}");

    private JinjaNode ParseStatement()
    {
        _depth++;
        try
        {
            return ParseStatementCore();
        }
        finally
        {
            _depth--;
        }
    }

    private JinjaNode ParseStatementCore()
    {
        JinjaToken kw = Next();
        int line = kw.Line;
        switch (kw.Value)
        {
            case "if":
            {
                var branches = new List<(JinjaExpr, List<JinjaNode>)>();
                JinjaExpr cond = ParseExpression();
                EndTag();
                List<JinjaNode>? elseBody = null;
                while (true)
                {
                    List<JinjaNode> body = ParseBody(out string? end, "elif", "else", "endif");
                    branches.Add((cond, body));
                    if (end == "elif")
                    {
                        cond = ParseExpression();
                        EndTag();
                        continue;
                    }

                    EndTag();
                    if (end == "else")
                    {
                        elseBody = ParseBody(out _, "endif");
                        EndTag();
                    }

                    return new NIf(branches, elseBody, line);
                }
            }

            case "for":
            {
                var targets = new List<string> { ExpectName() };
                while (AcceptOp(","))
                {
                    targets.Add(ExpectName());
                }

                Expect(JinjaTokenKind.Name, "in");
                JinjaExpr iterable = ParseExpression(noCondition: true);
                JinjaExpr? filter = AcceptName("if") ? ParseExpression(noCondition: true) : null;
                AcceptName("recursive");
                EndTag();
                List<JinjaNode> body = ParseBody(out string? end, "else", "endfor");
                EndTag();
                List<JinjaNode>? elseBody = null;
                if (end == "else")
                {
                    elseBody = ParseBody(out _, "endfor");
                    EndTag();
                }

                return new NFor(targets, iterable, filter, body, elseBody, line);
            }

            case "set":
            {
                var targets = new List<string> { ExpectName() };
                string? attribute = null;
                if (AcceptOp("."))
                {
                    attribute = ExpectName();
                }

                while (AcceptOp(","))
                {
                    targets.Add(ExpectName());
                }

                if (AcceptOp("="))
                {
                    JinjaExpr value = ParseTupleOrExpression();
                    EndTag();
                    return new NSet(targets, attribute, value, null, line);
                }

                EndTag();
                List<JinjaNode> body = ParseBody(out _, "endset");
                EndTag();
                return new NSet(targets, attribute, null, body, line);
            }

            case "macro":
            {
                string name = ExpectName();
                var parameters = new List<(string, JinjaExpr?)>();
                Expect(JinjaTokenKind.Operator, "(");
                while (!AcceptOp(")"))
                {
                    string p = ExpectName();
                    parameters.Add((p, AcceptOp("=") ? ParseExpression() : null));
                    AcceptOp(",");
                }

                EndTag();
                List<JinjaNode> body = ParseBody(out _, "endmacro");
                EndTag();
                return new NMacro(name, parameters, body, line);
            }

            case "call":
            {
                if (ParseExpression() is not JCall call)
                {
                    throw Error("call block needs a macro call");
                }

                EndTag();
                List<JinjaNode> body = ParseBody(out _, "endcall");
                EndTag();
                return new NCallBlock(call, body, line);
            }

            case "filter":
            {
                string name = ExpectName();
                var args = new List<JinjaExpr>();
                if (AcceptOp("("))
                {
                    while (!AcceptOp(")"))
                    {
                        args.Add(ParseExpression());
                        AcceptOp(",");
                    }
                }

                EndTag();
                List<JinjaNode> body = ParseBody(out _, "endfilter");
                EndTag();
                return new NFilterBlock(name, args, body, line);
            }

            case "generation":
            {
                // transformers' AssistantTracker: the body renders unchanged when only text is wanted.
                EndTag();
                List<JinjaNode> body = ParseBody(out _, "endgeneration");
                EndTag();
                return new NIf([(new JLiteral(true, line), body)], null, line);
            }

            case "break":
                EndTag();
                return new NBreak(line);
            case "continue":
                EndTag();
                return new NContinue(line);
            default:
                _p--;
                throw Error($"unknown statement '{kw.Value}'");
        }
    }

    private JinjaExpr ParseTupleOrExpression()
    {
        JinjaExpr first = ParseExpression();
        if (!Peek.Is(JinjaTokenKind.Operator, ","))
        {
            return first;
        }

        var items = new List<JinjaExpr> { first };
        while (AcceptOp(","))
        {
            items.Add(ParseExpression());
        }

        return new JList(items, first.Line);
    }

    public JinjaExpr ParseExpression(bool noCondition = false)
    {
        if (++_depth > MaxNesting)
        {
            throw Error($"expressions nested deeper than {MaxNesting}");
        }

        try
        {
            return ParseConditional(noCondition);
        }
        finally
        {
            _depth--;
        }
    }

    private JinjaExpr ParseConditional(bool noCondition)
    {
        JinjaExpr expr = ParseOr();
        if (noCondition)
        {
            return expr;
        }

        while (AcceptName("if"))
        {
            JinjaExpr cond = ParseOr();
            JinjaExpr? otherwise = AcceptName("else") ? ParseExpression() : null;
            expr = new JCondition(cond, expr, otherwise, expr.Line);
        }

        return expr;
    }

    private JinjaExpr ParseOr()
    {
        JinjaExpr left = ParseAnd();
        while (AcceptName("or"))
        {
            left = new JBinary("or", left, ParseAnd(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParseAnd()
    {
        JinjaExpr left = ParseNot();
        while (AcceptName("and"))
        {
            left = new JBinary("and", left, ParseNot(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParseNot()
    {
        int line = Peek.Line;
        return AcceptName("not") ? new JUnary("not", ParseNot(), line) : ParseCompare();
    }

    private JinjaExpr ParseCompare()
    {
        JinjaExpr left = ParseConcat();
        while (true)
        {
            if (Peek.Kind == JinjaTokenKind.Operator && Peek.Value is "==" or "!=" or "<" or "<=" or ">" or ">=")
            {
                string op = Next().Value;
                left = new JBinary(op, left, ParseConcat(), left.Line);
            }
            else if (AcceptName("in"))
            {
                left = new JBinary("in", left, ParseConcat(), left.Line);
            }
            else if (Peek.Is(JinjaTokenKind.Name, "not") && _t[_p + 1].Is(JinjaTokenKind.Name, "in"))
            {
                _p += 2;
                left = new JBinary("not in", left, ParseConcat(), left.Line);
            }
            else
            {
                return left;
            }
        }
    }

    private JinjaExpr ParseConcat()
    {
        JinjaExpr left = ParseAdd();
        while (AcceptOp("~"))
        {
            left = new JBinary("~", left, ParseAdd(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParseAdd()
    {
        JinjaExpr left = ParseMul();
        while (Peek.Kind == JinjaTokenKind.Operator && Peek.Value is "+" or "-")
        {
            string op = Next().Value;
            left = new JBinary(op, left, ParseMul(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParseMul()
    {
        JinjaExpr left = ParsePow();
        while (Peek.Kind == JinjaTokenKind.Operator && Peek.Value is "*" or "/" or "//" or "%")
        {
            string op = Next().Value;
            left = new JBinary(op, left, ParsePow(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParsePow()
    {
        JinjaExpr left = ParseUnary();
        while (AcceptOp("**"))
        {
            left = new JBinary("**", left, ParseUnary(), left.Line);
        }

        return left;
    }

    private JinjaExpr ParseUnary()
    {
        int line = Peek.Line;
        if (++_depth > MaxNesting)
        {
            throw Error($"expressions nested deeper than {MaxNesting}");
        }

        try
        {
            return ParseUnaryCore(line);
        }
        finally
        {
            _depth--;
        }
    }

    private JinjaExpr ParseUnaryCore(int line)
    {
        if (AcceptOp("-"))
        {
            return ParseFilters(new JUnary("-", ParseUnary(), line));
        }

        if (AcceptOp("+"))
        {
            return ParseFilters(ParseUnary());
        }

        return ParseFilters(ParsePostfix(ParsePrimary()));
    }

    private JinjaExpr ParsePrimary()
    {
        JinjaToken tok = Next();
        switch (tok.Kind)
        {
            case JinjaTokenKind.String:
            {
                string s = tok.Value;
                while (Peek.Kind == JinjaTokenKind.String)
                {
                    s += Next().Value;
                }

                return new JLiteral(s, tok.Line);
            }

            case JinjaTokenKind.Integer:
                return new JLiteral(long.Parse(tok.Value, CultureInfo.InvariantCulture), tok.Line);
            case JinjaTokenKind.Float:
                return new JLiteral(double.Parse(tok.Value, CultureInfo.InvariantCulture), tok.Line);
            case JinjaTokenKind.Name:
                return tok.Value switch
                {
                    "true" or "True" => new JLiteral(true, tok.Line),
                    "false" or "False" => new JLiteral(false, tok.Line),
                    "none" or "None" => new JLiteral(null, tok.Line),
                    _ => new JName(tok.Value, tok.Line),
                };
            case JinjaTokenKind.Operator when tok.Value == "(":
            {
                if (AcceptOp(")"))
                {
                    return new JList([], tok.Line);
                }

                JinjaExpr inner = ParseExpression();
                if (AcceptOp(","))
                {
                    var items = new List<JinjaExpr> { inner };
                    while (!AcceptOp(")"))
                    {
                        items.Add(ParseExpression());
                        AcceptOp(",");
                    }

                    return new JList(items, tok.Line);
                }

                Expect(JinjaTokenKind.Operator, ")");
                return inner;
            }

            case JinjaTokenKind.Operator when tok.Value == "[":
            {
                var items = new List<JinjaExpr>();
                while (!AcceptOp("]"))
                {
                    items.Add(ParseExpression());
                    if (!AcceptOp(","))
                    {
                        Expect(JinjaTokenKind.Operator, "]");
                        break;
                    }
                }

                return new JList(items, tok.Line);
            }

            case JinjaTokenKind.Operator when tok.Value == "{":
            {
                var items = new List<(JinjaExpr, JinjaExpr)>();
                while (!AcceptOp("}"))
                {
                    JinjaExpr key = ParseExpression();
                    Expect(JinjaTokenKind.Operator, ":");
                    items.Add((key, ParseExpression()));
                    if (!AcceptOp(","))
                    {
                        Expect(JinjaTokenKind.Operator, "}");
                        break;
                    }
                }

                return new JDict(items, tok.Line);
            }

            default:
                _p--;
                throw Error("expected an expression");
        }
    }

    private JinjaExpr ParsePostfix(JinjaExpr expr)
    {
        while (true)
        {
            int line = Peek.Line;
            if (AcceptOp("."))
            {
                expr = new JAttr(expr, Peek.Kind == JinjaTokenKind.Integer ? Next().Value : ExpectName(), line);
            }
            else if (AcceptOp("["))
            {
                JinjaExpr? start = null, stop = null, step = null;
                bool slice = false;
                if (!Peek.Is(JinjaTokenKind.Operator, ":"))
                {
                    start = ParseExpression();
                }

                if (AcceptOp(":"))
                {
                    slice = true;
                    if (!Peek.Is(JinjaTokenKind.Operator, "]") && !Peek.Is(JinjaTokenKind.Operator, ":"))
                    {
                        stop = ParseExpression();
                    }

                    if (AcceptOp(":") && !Peek.Is(JinjaTokenKind.Operator, "]"))
                    {
                        step = ParseExpression();
                    }
                }

                Expect(JinjaTokenKind.Operator, "]");
                expr = slice ? new JSlice(expr, start, stop, step, line) : new JItem(expr, start!, line);
            }
            else if (AcceptOp("("))
            {
                var (args, kwargs) = ParseArguments();
                expr = new JCall(expr, args, kwargs, line);
            }
            else
            {
                return expr;
            }
        }
    }

    private (List<JinjaExpr> Args, List<(string, JinjaExpr)> Kwargs) ParseArguments()
    {
        var args = new List<JinjaExpr>();
        var kwargs = new List<(string, JinjaExpr)>();
        while (!AcceptOp(")"))
        {
            if (Peek.Kind == JinjaTokenKind.Name && _t[_p + 1].Is(JinjaTokenKind.Operator, "="))
            {
                string name = Next().Value;
                _p++;
                kwargs.Add((name, ParseExpression()));
            }
            else
            {
                args.Add(ParseExpression());
            }

            if (!AcceptOp(","))
            {
                Expect(JinjaTokenKind.Operator, ")");
                break;
            }
        }

        return (args, kwargs);
    }

    private JinjaExpr ParseFilters(JinjaExpr expr)
    {
        while (true)
        {
            int line = Peek.Line;
            if (AcceptOp("|"))
            {
                string name = ExpectName();
                var (args, kwargs) = AcceptOp("(") ? ParseArguments() : ([], []);
                expr = new JFilter(expr, name, args, kwargs, line);
            }
            else if (AcceptName("is"))
            {
                bool negated = AcceptName("not");
                string name = Peek.Kind == JinjaTokenKind.Name ? ExpectName() : Next().Value;   // 'none', '==' …
                var args = new List<JinjaExpr>();
                if (AcceptOp("("))
                {
                    args = ParseArguments().Args;
                }
                else if (Peek.Kind is JinjaTokenKind.String or JinjaTokenKind.Integer or JinjaTokenKind.Float
                         || (Peek.Kind == JinjaTokenKind.Name && Peek.Value is not ("and" or "or" or "else" or "if" or "in" or "not" or "is")))
                {
                    args.Add(ParsePostfix(ParsePrimary()));
                }

                expr = new JTest(expr, name, args, negated, line);
            }
            else
            {
                return expr;
            }
        }
    }
}
