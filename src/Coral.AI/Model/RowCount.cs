namespace Coral.AI;

/// <summary>The row counts of the CPU micro-kernels (<see cref="IRowCount"/>).</summary>
internal static class RowCount
{
    public readonly struct One : IRowCount
    {
        public static int Count => 1;
    }

    public readonly struct Two : IRowCount
    {
        public static int Count => 2;
    }

    public readonly struct Three : IRowCount
    {
        public static int Count => 3;
    }

    public readonly struct Four : IRowCount
    {
        public static int Count => 4;
    }
}
