"""Subcommands of the `hyperflexis` CLI; see `hyperflexis.cli`."""
