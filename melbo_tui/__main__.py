"""`python -m melbo_tui` = the `melbo-tui` command."""

from melbo_tui.cli import main

main()
