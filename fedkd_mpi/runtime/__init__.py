"""Rank roles, devices, the client and server loops."""
