"""`python -m kiln ...` is the `kiln` command (kiln/cli). `python -m kiln bench` without a .kiln file
is the older spelling of `kiln compare` (benchmarks/compare.py) and still runs it."""

import sys


def main(argv: list[str]) -> int:
    try:
        from kiln.cli import main as cli
    except ImportError as exc:  # an environment made before the CLI's dependencies (typer, rich) were added
        if argv and argv[0] == "demo":
            from kiln.demo import main as demo

            return demo(argv[1:])
        print(f"the kiln command needs {exc.name}: pip install -e . (or ./run, which installs it)", file=sys.stderr)
        return 2
    if argv and argv[0] == "bench" and not any(a.endswith(".kiln") for a in argv[1:]):
        argv = ["compare", *argv[1:]]
    return cli(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
