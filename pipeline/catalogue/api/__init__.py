"""The REST API under ``/api/v1``: one thin router per resource; use cases live in ``services``/``auth``."""
