"""Routers: sweeps (the ``/v1`` API) and health (``/healthz``, ``/metrics``)."""
