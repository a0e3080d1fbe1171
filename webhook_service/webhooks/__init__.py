"""Stripe webhooks: verification, parsing, the handler registry and the event log."""
