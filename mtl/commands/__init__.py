"""The `mtl` subcommands, one module per area; `mtl.cli` puts them into one group."""
