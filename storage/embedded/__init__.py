"""Embedded PostgreSQL and Valkey servers kept under a data directory and shared by the processes using it."""

from __future__ import annotations

from storage.embedded.postgres import EmbeddedPostgres
from storage.embedded.server import EmbeddedServiceError
from storage.embedded.valkey import EmbeddedValkey

__all__ = ["EmbeddedPostgres", "EmbeddedServiceError", "EmbeddedValkey"]
