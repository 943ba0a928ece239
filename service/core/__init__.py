"""Settings and the domain exception tree of the service."""
