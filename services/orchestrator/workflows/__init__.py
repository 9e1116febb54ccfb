"""Workflows across services (issue 20): definitions (``catalog.py``), templates (``templates.py``),
what runs next (``graph.py``), starting steps and reading their ends (``steps.py``), the driver that
keeps each run on the log (``driver.py``) and the HTTP endpoints (``api.py``)."""
