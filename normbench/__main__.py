"""`python -m normbench`: the same command line as the `normbench` script."""

from normbench.cli import main

main()
