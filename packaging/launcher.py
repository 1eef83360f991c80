"""The frozen app's entry point: the same `cleo` command as an installed checkout."""

import sys

from app.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
