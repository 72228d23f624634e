"""`python -m kiln demo` (see kiln/demo.py) and `python -m kiln bench` (benchmarks/compare.py)."""

import os
import runpy
import sys

USAGE = "usage: python -m kiln demo | python -m kiln bench [--models ...] [--batches 1,large] [--modes ...] (see --help)"


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", "bench"):
        print(USAGE)
        return 2
    if argv[0] == "bench":
        return bench(argv[1:])
    from kiln.demo import main as demo

    return demo(argv[1:])


def bench(argv: list[str]) -> int:
    # The benchmark lives beside the package in a source checkout, not inside the installed package.
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "compare.py")
    if not os.path.exists(script):
        print(f"python -m kiln bench runs benchmarks/compare.py from a Kiln source checkout; {script} is not there.")
        return 2
    namespace = runpy.run_path(script, run_name="kiln_bench")
    return namespace["main"](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
