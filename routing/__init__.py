"""Routing decisions and forwarding of OCPI requests between parties."""
