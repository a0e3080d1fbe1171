"""NAT billing webhook service: Stripe webhooks in, monthly scan quotas out."""
