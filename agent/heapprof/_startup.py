"""Start-up hook: imported by heapprof.pth (site.py) only when HEAPPROF_SOCKET is set.

Profiles the program from its first line without any code change. Any failure is one line
on stderr and the program runs unprofiled: a profiler must never stop the program.
"""
import sys


def _main():
    try:
        import heapprof
        heapprof._start_from_environment()
    except Exception as e:  # noqa: BLE001 - never break the user's program
        sys.stderr.write('heapprof: start-up hook failed (%s: %s); running unprofiled\n'
                         % (type(e).__name__, e))


_main()
