"""The ``paretoedge`` command line and the queries users run on stored studies."""
