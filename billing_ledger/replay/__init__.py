"""Operations on the ledger: rebuild (replay), backfill, reconcile, explain."""
