"""The `cleo` console script.

With no command it opens Cleo; commands (`cleo chat`, ...) are handed to `engine.cli` without
importing Qt, so they work on machines with no display.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    from engine import cli

    if not args:
        # The desktop window arrives with issue 6; until then Cleo opens in the terminal.
        args = ["chat"]
    return cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
