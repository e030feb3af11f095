"""The bodies of the ``cmworker`` subcommands; ``cmworker.cli`` imports only the one being run."""
