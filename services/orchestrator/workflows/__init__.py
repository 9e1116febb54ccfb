"""Workflows across services (issue 20): definitions (``catalog.py``), templates (``templates.py``),
what runs next (``graph.py``), starting steps and reading their ends (``steps.py``), how a run is on
the log (``runlog.py``), the driver that advances, cancels and rebuilds runs (``driver.py``) and the
HTTP endpoints (``api.py``)."""
