"""PandaLM judge: prompt and parse, verdict rules, backends, metrics.

A judge never downloads: the package turns Hugging Face hub access off before any of its
modules can import a Hugging Face library.
"""

from common.offline import stay_offline

stay_offline()
