"""Unit tests of billing_ledger/projections/ (no I/O)."""
