"""The marker for tests that read the project's licence-clean chat data (../shared/data).

That folder sits beside the checkout, not in it, so a plain clone (GitHub's runners) lacks it:
there those tests are skipped, saying where the data was looked for. `make test` sets
CLEO_REQUIRE_SHARED_DATA, so on the project's own machines a missing folder fails instead.
"""

from __future__ import annotations

import os

import pytest

from training.finetune import SHARED_DATA

needs_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir() and not os.environ.get("CLEO_REQUIRE_SHARED_DATA"),
    reason=f"the project's chat data is not at {SHARED_DATA} (set CLEO_SHARED_DATA to its folder)")
