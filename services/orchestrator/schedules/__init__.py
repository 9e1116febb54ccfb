"""Schedules (issue 20): executions fired on a cron or an interval, once per slot across replicas and restarts.

``slots.py`` (when), ``book.py`` (the projection of the topic, and who wins a slot), ``log.py`` (the
topic), ``scheduler.py`` (bids and firings), ``api.py`` (``/v1/schedules``).
"""
