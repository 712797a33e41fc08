"""Unit tests of billing_ledger/http/ (no I/O)."""
