using System.Text;

namespace Coral.AI;

/// <summary>
/// Turns a stream of token ids into text, emitting only complete UTF-8 sequences: a character split over several
/// byte tokens (an emoji, CJK under byte fallback) appears once its last byte arrives, never as U+FFFD halves.
/// </summary>
internal sealed class StreamingDetokenizer
{
    private readonly HfTokenizer _tokenizer;
    private readonly bool _skipSpecial;
    private readonly List<byte> _pending = [];
    private bool _atStart = true;

    public StreamingDetokenizer(HfTokenizer tokenizer, bool skipSpecial = true)
    {
        _tokenizer = tokenizer;
        _skipSpecial = skipSpecial;
    }

    /// <summary>Adds a token and returns the text that became complete (possibly empty).</summary>
    public string Push(int id)
    {
        if (_skipSpecial && _tokenizer.IsSpecial(id) && !_tokenizer.IsMarker(id))
        {
            return string.Empty;
        }

        _pending.AddRange(_tokenizer.TokenBytes(id).ToArray());
        int complete = CompletePrefixLength(_pending);
        if (complete == 0)
        {
            return string.Empty;
        }

        string text = Encoding.UTF8.GetString(_pending.GetRange(0, complete).ToArray());
        _pending.RemoveRange(0, complete);
        if (_atStart && text.Length > 0)
        {
            _atStart = false;
            if (_tokenizer.StripsLeadingSpace && text[0] == ' ')
            {
                text = text[1..];
            }
        }

        return text;
    }

    /// <summary>Returns whatever bytes remain (an incomplete sequence decodes to U+FFFD, as HF does).</summary>
    public string Flush()
    {
        string text = Encoding.UTF8.GetString(_pending.ToArray());
        _pending.Clear();
        return text;
    }

    /// <summary>Length of the longest prefix that does not end inside a UTF-8 sequence.</summary>
    internal static int CompletePrefixLength(List<byte> bytes)
    {
        int n = bytes.Count;
        // Walk back over at most 3 continuation bytes to the last lead byte.
        for (int back = 1; back <= Math.Min(4, n); back++)
        {
            byte b = bytes[n - back];
            if ((b & 0xC0) == 0x80)
            {
                continue;
            }

            int need = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 1;
            return back >= need ? n : n - back;
        }

        return n;
    }
}
