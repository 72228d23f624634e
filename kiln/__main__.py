"""`python -m kiln demo` (kiln/demo.py), `python -m kiln bench` (benchmarks/compare.py) and
`python -m kiln bench-dynamic` (benchmarks/dynamic.py)."""

import os
import runpy
import sys

USAGE = (
    "usage: python -m kiln demo | python -m kiln bench [--models ...] [--batches 1,large] [--modes ...] | "
    "python -m kiln bench-dynamic [--cases ...] [--smoke] (each takes --help)"
)
SCRIPTS = {"bench": "compare.py", "bench-dynamic": "dynamic.py"}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo", *SCRIPTS):
        print(USAGE)
        return 2
    if argv[0] in SCRIPTS:
        return bench(SCRIPTS[argv[0]], argv[1:])
    from kiln.demo import main as demo

    return demo(argv[1:])


def bench(name: str, argv: list[str]) -> int:
    # The benchmarks live beside the package in a source checkout, not inside the installed package.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = os.path.join(root, "benchmarks", name)
    if not os.path.exists(script):
        print(f"this runs benchmarks/{name} from a Kiln source checkout; {script} is not there.")
        return 2
    if root not in sys.path:
        sys.path.insert(0, root)  # the script imports its neighbours as `benchmarks.*`
    namespace = runpy.run_path(script, run_name="kiln_bench")
    return namespace["main"](argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
