namespace Coral.AI;

/// <summary>
/// Finds stop sequences in streamed text across token boundaries. Text that could still be the start of a stop sequence
/// is held back; the stop sequence itself and everything after it are never emitted.
/// </summary>
internal sealed class StopSequenceMatcher
{
    private readonly string[] _stops;
    private string _pending = string.Empty;

    public StopSequenceMatcher(IEnumerable<string>? stops)
    {
        _stops = stops?.Where(s => !string.IsNullOrEmpty(s)).Distinct(StringComparer.Ordinal).ToArray() ?? [];
    }

    public bool IsEmpty => _stops.Length == 0;

    /// <summary>Adds text; returns what is safe to emit and whether a stop sequence was hit.</summary>
    public (string Emit, bool Stopped) Push(string text)
    {
        if (_stops.Length == 0)
        {
            return (text, false);
        }

        _pending += text;
        int first = -1;
        foreach (string s in _stops)
        {
            int i = _pending.IndexOf(s, StringComparison.Ordinal);
            if (i >= 0 && (first < 0 || i < first))
            {
                first = i;
            }
        }

        if (first >= 0)
        {
            string emit = _pending[..first];
            _pending = string.Empty;
            return (emit, true);
        }

        int hold = 0;
        foreach (string s in _stops)
        {
            for (int len = Math.Min(s.Length - 1, _pending.Length); len > hold; len--)
            {
                if (_pending.AsSpan(_pending.Length - len).SequenceEqual(s.AsSpan(0, len)))
                {
                    hold = len;
                    break;
                }
            }
        }

        string safe = _pending[..^hold];
        _pending = _pending[^hold..];
        return (safe, false);
    }

    /// <summary>Returns the held-back text at the end of generation.</summary>
    public string Flush()
    {
        string rest = _pending;
        _pending = string.Empty;
        return rest;
    }
}
