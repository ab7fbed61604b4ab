"""python -m heapprof: the `heapprof` command line (heapprof.cli), or, when the analysis
tools are not installed, just the agent's `run` and `stats PROGRAM` commands."""
import sys


def _fallback(argv):
    from heapprof import runner
    if argv and argv[0] == 'run':
        return runner.run_main(argv[1:])
    if argv and argv[0] == 'stats':
        return runner.stats_main(argv[1:])
    sys.stderr.write('usage: python -m heapprof {run,stats} [options] PROGRAM [args...]\n')
    return 2


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        from heapprof.cli import main as cli_main
    except ImportError:
        return _fallback(argv)
    return cli_main(argv)


if __name__ == '__main__':
    sys.exit(main())
