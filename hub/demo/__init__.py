"""`ocpi-hub demo`: the hub with two demo CPOs and two demo eMSPs exchanging realistic OCPI traffic."""
