"""An event-sourced Stripe billing ledger."""
