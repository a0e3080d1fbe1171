"""Quotas: tenants and their API keys, subscriptions, plans, periods and scan spends."""
