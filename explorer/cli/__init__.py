"""``python -m explorer``: :mod:`.main` assembles the commands (each lives with its capability),
:mod:`.common` holds what they share, :mod:`.traces` the commands on a trace itself."""
