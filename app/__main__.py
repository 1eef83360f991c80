"""The `cleo` console script.

With no command it opens Cleo; commands (`cleo chat`, ...) are handed to `engine.cli.main` without
importing Qt, so they work on machines with no display.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["--smoke-test"]:
        from app.smoke import run as smoke_test

        return smoke_test()
    if not args:
        from app.gui import run

        return run()
    from engine import run_command

    return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
