"""Write side: verify a webhook, normalise a payload, append it once."""
