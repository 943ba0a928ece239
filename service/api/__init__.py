"""The HTTP API: routers under ``/v1``, dependencies, and response models."""
