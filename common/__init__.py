"""What the project's packages share, and import from nothing of theirs: where its files
are (paths), TorchServe's config and key files (torchserve_files), loopback ports and
plain HTTP (net), key rotation (keys), JSON log lines (events). clients/, server/,
gateway/, testbed/, bench/ and training/ build on it; tests/unit/test_layers.py holds the
packages to an order without cycles."""
