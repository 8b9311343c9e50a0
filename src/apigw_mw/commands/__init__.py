"""Subcommands of the ``apigw-mw`` command, one module each."""
