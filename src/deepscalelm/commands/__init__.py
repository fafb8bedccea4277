"""Subcommands of the ``dslm`` CLI, one module each (see `deepscalelm.cli`)."""
