namespace Coral.Samples.WebApi;

/// <summary>
/// Admission control in front of the model: at most <c>capacity</c> requests wait or run; beyond that the endpoint answers
/// 429 with Retry-After instead of hanging. The model host itself serves requests one at a time, in arrival order, or
/// <c>Coral:ParallelRequests</c> of them together (continuous batching).
/// </summary>
public sealed class RequestQueue(int capacity)
{
    private int _inFlight;

    /// <summary>Gets the number of admitted requests (running or waiting).</summary>
    public int InFlight => Volatile.Read(ref _inFlight);

    /// <summary>Tries to admit a request; dispose the result when it ends.</summary>
    /// <returns>A release handle, or null when the queue is full.</returns>
    public IDisposable? TryEnter()
    {
        if (Interlocked.Increment(ref _inFlight) > capacity)
        {
            Interlocked.Decrement(ref _inFlight);
            return null;
        }

        return new Release(this);
    }

    private sealed class Release(RequestQueue queue) : IDisposable
    {
        private int _done;

        public void Dispose()
        {
            if (Interlocked.Exchange(ref _done, 1) == 0)
            {
                Interlocked.Decrement(ref queue._inFlight);
            }
        }
    }
}
