"""`python -m kiln demo` (see kiln/demo.py)."""

import sys


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in ("demo",):
        print("usage: python -m kiln demo")
        return 2
    from kiln.demo import main as demo

    return demo(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
