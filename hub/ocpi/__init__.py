"""OCPI endpoints the hub serves itself: versions, credentials and the functional modules."""
