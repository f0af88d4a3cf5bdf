"""Command-line tools around train.py: the noise sweep and its report, the official spectrum
analysis, and shard writing. Installed as console commands (``nmt-sweep``, ``nmt-report``,
``nmt-spectrum``, ``nmt-write-shards``; see pyproject.toml); ``python scripts/<name>.py`` works
the same in an installed checkout."""
