"""`python -m scanner` is the `checkpoint` command."""
from .cli import main

main(prog_name="checkpoint")
