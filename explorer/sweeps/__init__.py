"""A trace over a grid of settings: :mod:`.metrics` (what one configuration costs), :mod:`.sweep`
(the grid on Dask, rows to Parquet/CSV), :mod:`.job` (a sweep in a background thread for the
Compare page), :mod:`.command` (``sweep``)."""
