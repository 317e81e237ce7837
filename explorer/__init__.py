"""DPAMT Explorer: a step-by-step simulation of Intel TDX Dynamic PAMT in Linux/KVM.

The packages are the pipeline a trace goes through (docs/architecture.md draws it):

- ``ingest``: what comes in: trace files (format v1) and kernel captures, parsed and checked.
- ``model``: the kernel model (KVM's fault path, DPAMT, the TDX module) and its invariants.
- ``replay``: a trace replayed on the model: the timeline of steps, seeking, text rendering.
- analyses, one package each with its pure core, its background job for the app and its CLI
  command: ``interleavings`` (every schedule of a concurrent group), ``sweeps`` (a trace over a
  grid of settings, on Dask), ``designs`` (each design's rationale, memory overhead),
  ``conformance`` (a kernel capture against the model), ``teaching`` (tours, predictions,
  handouts).
- ``views``: pure functions from timeline data to Plotly figures and tables.
- ``cli``: ``python -m explorer``, assembled from the analyses' commands.

Dependencies point one way: pages -> views -> replay -> model / ingest. ``explorer.model`` and
``explorer.ingest`` import only the standard library; nothing in ``explorer`` imports streamlit.
"""

__version__ = "0.1.0"
