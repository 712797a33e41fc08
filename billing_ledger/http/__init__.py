"""HTTP edge: the Stripe webhook, the /v1 reads, Checkout and portal sessions, pages."""
