"""Candidate instruction tuning over a search space, and response generation (`pandalm-train`).

Importing this package first imports `judge`, which turns Hugging Face hub access off before any
Hugging Face library reads its settings: a site never downloads at run time.
"""

import judge  # noqa: F401
