"""The commands behind `billing-ledger`: each builds the service through the composition root."""
