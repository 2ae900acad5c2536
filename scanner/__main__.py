"""`python -m scanner` is the `checkpoint` command."""
from scanner.cli.main import main

main(prog_name="checkpoint")
