"""One module per CLI verb (see deploykit/cli.py for the contract)."""
