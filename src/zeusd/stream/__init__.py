"""Power subscriptions: shared per-device polling, fanned out to subscribers."""
