"""Stripe API side: checkout and portal sessions, and reconciliation of missed events."""
