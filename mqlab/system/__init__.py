"""The system under study: the API (producer), the worker (consumer), and what keeps their
promises (retries, dead letters, the reconciler). It imports the protocol, the database and
the settings below it, and nothing of the lab, the figures or the faces above it."""
