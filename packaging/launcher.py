"""The frozen app's entry point: the same `cleo` command as an installed checkout.

The frozen app is also its own chat-template render process (engine/runtime/template_process.py):
started again with that module's flag, it serves renders and never reaches the app, so the check
comes before anything else is imported.
"""

import sys

from engine.runtime.template_process import serve_if_asked

if __name__ == "__main__":
    serve_if_asked()
    from app.__main__ import main

    sys.exit(main())
