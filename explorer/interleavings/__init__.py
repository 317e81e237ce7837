"""Every interleaving of a trace's concurrent groups: :mod:`.search` (the state-space search, its
outcomes and findings), :mod:`.job` (the search as a child process for the app's Interleavings
page), :mod:`.grid` (many traces x settings as Dask tasks), :mod:`.command` (``explore``,
``explore-grid``)."""
