"""One module per `posttrain` subcommand: HELP, add_arguments(parser), run(args) -> int."""
