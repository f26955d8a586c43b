"""Candidate instruction tuning over a search space, and response generation (`pandalm-train`).

A site never downloads at run time: the package turns Hugging Face hub access off before any of
its modules can import a Hugging Face library.
"""

from common.offline import stay_offline

stay_offline()
