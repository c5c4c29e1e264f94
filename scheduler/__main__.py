"""`python -m scheduler` is the same CLI as the `scheduler` command."""

from scheduler.cli import main

main()
