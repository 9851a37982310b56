"""``python -m mistralrs serve ...``: the OpenAI-compatible server (see ``--help``)."""

from __future__ import annotations

import sys


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"} or argv[0] != "serve":
        print("usage: python -m mistralrs serve [options]   (python -m mistralrs serve --help)", file=sys.stderr)
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    try:
        from mistralrs.server.cli import main
    except ImportError as e:
        print(f"python -m mistralrs serve: {e}; install the server extra: pip install 'mistralrs[server]'", file=sys.stderr)
        return 2
    return main(argv[1:], prog="python -m mistralrs serve")


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
