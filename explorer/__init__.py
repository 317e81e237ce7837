"""DPAMT Explorer: a step-by-step simulation of Intel TDX Dynamic PAMT in Linux/KVM.

Layers (dependencies point one way): ``pages`` -> ``explorer.views`` -> ``explorer.frames`` ->
``explorer.timeline`` -> ``explorer.model`` / ``explorer.trace``. ``explorer.model`` and
``explorer.trace`` import only the standard library; nothing in ``explorer`` imports streamlit.
"""

__version__ = "0.1.0"
