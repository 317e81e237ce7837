"""The Streamlit pieces the pages share, one module per piece.

Why a package beside the pages, not in them: a page is a script Streamlit executes from the top
on every rerun, so anything two pages need (or a page too long to read) goes here as functions
the page calls. Pieces: ``loader`` (a sample, an upload or a capture becomes the loaded trace;
the URL), ``replays`` (cached parses, replays and metrics), ``settings`` (the knobs' sidebar),
``tables`` (escaped tables), ``stepper`` (Explore's step controls and play clock),
``step_panel`` (the step's text, the code panel and the locks), ``state_panel`` (the region map
and the caches; the charts' export config), ``explore_tabs`` (Explore's tabs), ``tour_view``
(a tour stop's view), ``progress`` (a background job's progress and Cancel), ``sweep_panel`` and
``overhead_panel`` (Compare's sweep and memory sections). ``app_pages/common.py`` gathers the
shared names under one import for the pages. Streamlit stays out of ``explorer/``.
"""
