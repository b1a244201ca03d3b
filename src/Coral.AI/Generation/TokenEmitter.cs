using System.Diagnostics;
using System.Text;

namespace Coral.AI;

/// <summary>
/// Where every generated token goes, whoever proposed it (plain decoding or a verified draft tree): EOS and turn-end
/// tokens, streaming UTF-8 text, stop sequences held back across tokens, the output cap. <see cref="Emit"/> says
/// whether generation goes on, so a speculative cycle never emits past a stop.
/// </summary>
internal sealed class TokenEmitter
{
    private readonly GenerationRequest _request;
    private readonly IReadOnlyList<int> _eos;
    private readonly StreamingDetokenizer _detok;
    private readonly StopSequenceMatcher _stops;
    private readonly Action<int, string>? _onText;
    private readonly Stopwatch _clock;
    private readonly StringBuilder _text = new();

    public TokenEmitter(GenerationRequest request, HfTokenizer tokenizer, IReadOnlyList<int> eos, Action<int, string>? onText, Stopwatch clock)
    {
        _request = request;
        _eos = eos;
        _detok = new StreamingDetokenizer(tokenizer);
        _stops = new StopSequenceMatcher(request.StopSequences);
        _onText = onText;
        _clock = clock;
    }

    public List<int> Ids { get; } = [];

    public GenerationFinish Finish { get; private set; } = GenerationFinish.Length;

    public bool Finished { get; private set; }

    public TimeSpan TimeToFirstToken { get; private set; }

    public string Text => _text.ToString();

    /// <summary>Emits one token; returns false when generation must end (then <see cref="Finish"/> says why).</summary>
    public bool Emit(int token)
    {
        if (Finished)
        {
            return false;
        }

        Ids.Add(token);
        if (Ids.Count == 1)
        {
            TimeToFirstToken = _clock.Elapsed;
        }

        if (_eos.Contains(token) || _request.StopTokenIds?.Contains(token) == true)
        {
            return End(GenerationFinish.Stop);
        }

        (string text, bool stopped) = _stops.Push(_detok.Push(token));
        Append(token, text);
        if (stopped)
        {
            return End(GenerationFinish.Stop);
        }

        return Ids.Count < _request.MaxNewTokens || End(GenerationFinish.Length);
    }

    /// <summary>Ends generation because a constrained output is complete; flushes held-back text.</summary>
    public void EndComplete()
    {
        if (!Finished)
        {
            Finished = true;
            Finish = GenerationFinish.Stop;
            string rest = _stops.Push(_detok.Flush()).Emit + _stops.Flush();
            if (rest.Length > 0)
            {
                Append(-1, rest);
            }
        }
    }

    /// <summary>Ends generation for lack of context; flushes held-back text.</summary>
    public void EndForContext()
    {
        if (!Finished)
        {
            End(GenerationFinish.Length);
        }
    }

    private bool End(GenerationFinish finish)
    {
        Finished = true;
        Finish = finish;
        bool endedByStopText = finish == GenerationFinish.Stop && !_eos.Contains(Ids[^1]) && _request.StopTokenIds?.Contains(Ids[^1]) != true;
        if (!endedByStopText)
        {
            // Text held back for a possible stop sequence, or an incomplete UTF-8 tail, belongs to the answer.
            string rest = _stops.Push(_detok.Flush()).Emit + _stops.Flush();
            if (rest.Length > 0)
            {
                Append(-1, rest);
            }
        }

        return false;
    }

    private void Append(int token, string text)
    {
        _text.Append(text);
        _onText?.Invoke(token, text);
    }
}
