"""CLI subcommands: each module has register(subparsers) and main(args) -> exit code."""
