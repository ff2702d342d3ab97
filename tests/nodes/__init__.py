"""Multi-node tests on fake nodes (network, UTS and mount namespaces on this machine)."""
