"""The OCPI hub's HTTP application, OCPI endpoints, admin API and CLI."""
