"""Quotas: tenants and their API keys, subscriptions, plans, periods and scan spends.

- ``service.py``: :class:`QuotaService`, the operations the web layer and the CLI call
  (authenticate, usage, spend, sync, tenants), each in one transaction.
- ``event_handlers.py``: the Stripe event handlers (payload -> locks and reads ->
  decision -> writes -> history).
- ``payloads.py``: what the handlers read from event payloads, in both shapes (pure).
- ``decisions.py``: event ordering, period moves, unknown prices, customer moves (pure).
- ``entitlements.py``, ``periods.py``: the plan, quota and window subscriptions grant (pure).
- ``tenants.py``: the forms of tenant ids, API keys and customer ids (pure).
- ``sync.py``: a tenant sync, planned (pure) and applied in set-based statements.
- ``history.py``: entitlements before and after a change, and the history rows.
- ``store.py``: every SQL statement of the domain, and its lock order.
"""
