"""Unit tests of billing_ledger/replay/ (no I/O)."""
