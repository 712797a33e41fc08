"""Unit tests of billing_ledger/ledger/ (no I/O)."""
