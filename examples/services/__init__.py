"""Reference Query and Embedding services: real HTTP servers that accept work, answer with a job id at
once, and report completion to the orchestrator (``/ws/task_updates`` or the ``jobs.completed`` topic)."""
