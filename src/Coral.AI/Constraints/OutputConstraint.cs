using System.Text;
using System.Text.Json;

namespace Coral.AI;

/// <summary>
/// What a constrained generation must produce: a sequence of fixed texts and JSON values (with or without a schema).
/// Used for JSON output (<c>ChatResponseFormat.Json</c>, JSON schema) and for forced tool calls (<c>ToolMode.Require*</c>).
/// Each request gets its own state through <see cref="Start"/>.
/// </summary>
internal sealed class OutputConstraint
{
    private readonly List<object> _parts;   // byte[] literal or JsonElement?-boxed schema (JsonSchemaPart)

    private OutputConstraint(List<object> parts) => _parts = parts;

    /// <summary>A JSON document, optionally matching a schema.</summary>
    public static OutputConstraint Json(JsonElement? schema) => new([new JsonSchemaPart(schema)]);

    /// <summary>Fixed text, then a JSON value, then fixed text (e.g. a tool-call wrapper).</summary>
    public static OutputConstraint Wrapped(string prefix, JsonElement? schema, string suffix) =>
        new([Encoding.UTF8.GetBytes(prefix), new JsonSchemaPart(schema), Encoding.UTF8.GetBytes(suffix)]);

    public State Start() => new(this, 0, 0, _parts[0] is JsonSchemaPart j ? JsonConstraint.Create(j.Schema) : null);

    private sealed record JsonSchemaPart(JsonElement? Schema);

    /// <summary>The position inside the sequence; <see cref="TryAdvance"/> returns a new state and never mutates this one.</summary>
    internal sealed class State
    {
        private readonly OutputConstraint _owner;
        private readonly int _part;
        private readonly int _offset;
        private readonly JsonConstraint? _json;

        public State(OutputConstraint owner, int part, int offset, JsonConstraint? json)
        {
            _owner = owner;
            _part = part;
            _offset = offset;
            _json = json;
        }

        /// <summary>Gets whether the whole sequence has been produced.</summary>
        public bool IsComplete => _part >= _owner._parts.Count;

        /// <summary>Gets whether generation may stop here.</summary>
        public bool CanEnd => IsComplete || (_part == _owner._parts.Count - 1 && _json?.CanEnd == true);

        public State? TryAdvance(ReadOnlySpan<byte> bytes)
        {
            int part = _part, offset = _offset;
            JsonConstraint? json = _json?.Clone();
            foreach (byte b in bytes)
            {
                while (true)
                {
                    if (part >= _owner._parts.Count)
                    {
                        return null;
                    }

                    if (_owner._parts[part] is byte[] literal)
                    {
                        if (literal[offset] != b)
                        {
                            return null;
                        }

                        if (++offset == literal.Length)
                        {
                            (part, offset, json) = Next(part + 1);
                        }

                        break;
                    }

                    // A JSON part: a number only ends when a following byte does not fit it.
                    if (json!.Advance([b]))
                    {
                        if (json.IsComplete)
                        {
                            (part, offset, json) = Next(part + 1);
                        }

                        break;
                    }

                    if (json.CanEnd && part + 1 < _owner._parts.Count)
                    {
                        (part, offset, json) = Next(part + 1);
                        continue;
                    }

                    return null;
                }
            }

            return new State(_owner, part, offset, json);
        }

        private (int Part, int Offset, JsonConstraint? Json) Next(int part) =>
            (part, 0, part < _owner._parts.Count && _owner._parts[part] is JsonSchemaPart j ? JsonConstraint.Create(j.Schema) : null);
    }
}
