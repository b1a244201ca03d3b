using System.Globalization;
using System.Text;

namespace Coral.AI;

/// <summary>Where a '▁' is prepended: the Prepend normalizer (every segment between added tokens, unconditionally), or
/// Metaspace's prepend_scheme (always / first segment, unless the text already starts with '▁').</summary>
internal enum SentencePiecePrepend
{
    None,
    EverySegment,
    Always,
    First,
}

/// <summary>
/// SentencePiece-style BPE as tokenizer.json describes it for Llama-2, Mistral v0.1 and Gemma: spaces become '▁', a '▁'
/// is prepended (not for Gemma), merges apply by rank over characters, and characters outside the vocabulary fall back to
/// <c>&lt;0xNN&gt;</c> byte tokens.
/// </summary>
internal sealed class SentencePieceBpe
{
    private const char Space = '\u2581';
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<(string, string), int> _ranks;
    private readonly int[] _byteIds = new int[256];
    private readonly bool _byteFallback;
    private readonly int? _unk;
    private readonly SentencePiecePrepend _prepend;
    private readonly bool _split;
    private readonly Dictionary<string, int[]> _cache = new(StringComparer.Ordinal);

    /// <summary>The longest word whose ids are cached.</summary>
    private const int MaxCachedWord = 256;

    public SentencePieceBpe(Dictionary<string, int> vocab, List<(string, string)> merges, bool byteFallback, int? unk, SentencePiecePrepend prepend, bool split)
    {
        _vocab = vocab;
        _ranks = new Dictionary<(string, string), int>(merges.Count);
        for (int i = 0; i < merges.Count; i++)
        {
            _ranks.TryAdd(merges[i], i);
        }

        _byteFallback = byteFallback;
        _unk = unk is >= 0 ? unk : null;
        _prepend = prepend;
        _split = split;
        for (int b = 0; b < 256; b++)
        {
            _byteIds[b] = vocab.GetValueOrDefault($"<0x{b:X2}>", -1);
        }
    }

    public int PieceId(string piece) => _vocab.GetValueOrDefault(piece, -1);

    /// <summary>Gets the bytes a piece decodes to: a byte token's byte, or the text with '▁' as space.</summary>
    public static byte[] PieceBytes(string piece)
    {
        if (piece.Length == 6 && piece.StartsWith("<0x", StringComparison.Ordinal) && piece[5] == '>'
            && byte.TryParse(piece.AsSpan(3, 2), NumberStyles.HexNumber, CultureInfo.InvariantCulture, out byte b))
        {
            return [b];
        }

        return Encoding.UTF8.GetBytes(piece.Replace(Space, ' '));
    }

    public void Encode(string text, bool atStart, List<int> ids)
    {
        string s = text.Replace(' ', Space);
        bool prepend = _prepend switch
        {
            SentencePiecePrepend.EverySegment => true,
            SentencePiecePrepend.Always => !s.StartsWith(Space),
            SentencePiecePrepend.First => atStart && !s.StartsWith(Space),
            _ => false,
        };
        if (prepend)
        {
            s = Space + s;
        }

        if (!_split)
        {
            EncodeWord(s, ids);
            return;
        }

        int begin = 0;
        for (int i = 1; i <= s.Length; i++)
        {
            if (i == s.Length || s[i] == Space)
            {
                EncodeWord(s[begin..i], ids);
                begin = i;
            }
        }
    }

    private void EncodeWord(string word, List<int> ids)
    {
        if (word.Length == 0)
        {
            return;
        }

        // Short words only: without a pre-tokenizer (Llama-2, Gemma) a "word" is a whole segment of the prompt.
        bool cacheable = word.Length <= MaxCachedWord;
        if (cacheable && _cache.TryGetValue(word, out int[]? cached))
        {
            ids.AddRange(cached);
            return;
        }

        List<string> symbols = Merge(word);
        var result = new List<int>(symbols.Count);
        foreach (string sym in symbols)
        {
            if (_vocab.TryGetValue(sym, out int id))
            {
                result.Add(id);
            }
            else if (_byteFallback && Encoding.UTF8.GetBytes(sym).All(b => _byteIds[b] >= 0))
            {
                result.AddRange(Encoding.UTF8.GetBytes(sym).Select(b => _byteIds[b]));
            }
            else if (_unk is int u)
            {
                result.Add(u);
            }
        }

        if (cacheable && _cache.Count < 100_000)
        {
            _cache[word] = result.ToArray();
        }

        ids.AddRange(result);
    }

    /// <summary>
    /// The word's characters merged as BPE does: always the pair of lowest merge rank next, the leftmost of equal ones,
    /// until no adjacent pair has a merge. A heap of candidate pairs (rank, left position) over a linked list of symbols
    /// makes it O(n log n) — the rescan of every pair after each merge was O(n²), minutes for a long prompt without a
    /// pre-tokenizer. Entries whose pair has changed since they were pushed are skipped when popped (a rank names one pair).
    /// </summary>
    private List<string> Merge(string word)
    {
        var symbols = new List<string?>();
        for (int i = 0; i < word.Length; i += char.IsSurrogatePair(word, i) ? 2 : 1)
        {
            symbols.Add(char.IsSurrogatePair(word, i) ? word.Substring(i, 2) : word[i].ToString());
        }

        int n = symbols.Count;
        var next = new int[n];
        var prev = new int[n];
        for (int i = 0; i < n; i++)
        {
            (prev[i], next[i]) = (i - 1, i + 1 < n ? i + 1 : -1);
        }

        var heap = new PriorityQueue<int, (int Rank, int Position)>();
        void Push(int i)
        {
            if (next[i] >= 0 && _ranks.TryGetValue((symbols[i]!, symbols[next[i]]!), out int rank))
            {
                heap.Enqueue(i, (rank, i));
            }
        }

        for (int i = 0; i + 1 < n; i++)
        {
            Push(i);
        }

        while (heap.TryDequeue(out int left, out var key))
        {
            int right = next[left];
            if (symbols[left] is not string a || right < 0 || !_ranks.TryGetValue((a, symbols[right]!), out int rank) || rank != key.Rank)
            {
                continue;   // merged away, or its pair changed since
            }

            symbols[left] = a + symbols[right];
            symbols[right] = null;
            next[left] = next[right];
            if (next[right] >= 0)
            {
                prev[next[right]] = left;
            }

            if (prev[left] >= 0)
            {
                Push(prev[left]);
            }

            Push(left);
        }

        return symbols.Where(x => x is not null).ToList()!;
    }
}
