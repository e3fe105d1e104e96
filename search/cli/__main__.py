"""``python -m search.cli``: the ``paretoedge`` command."""

from search.cli.app import main

main()
