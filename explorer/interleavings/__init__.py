"""Every interleaving of a trace's concurrent groups: :mod:`.search` (the state-space search, its
outcomes and findings), :mod:`.job` (the search as a child process for the app's Interleavings
page), :mod:`.grid` (many traces x settings as Dask tasks), :mod:`.command` (``explore``,
``explore-grid``)."""

from explorer.model.native import SEARCH as _SEARCH

#: True when :mod:`.search` runs compiled: the search's build of
#: :mod:`explorer.model.native` (``DPAMT_PURE=search``, how ``explore`` runs it), set before
#: the module is imported, so that every import of it finds the same build.
NATIVE = _SEARCH.activate(__path__, __name__)
