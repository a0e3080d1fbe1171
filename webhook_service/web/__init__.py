"""Every HTTP concern: the app, the webhook's door, the views, the request log, tenant
authentication and rate limits, and the one mapping from errors to JSON bodies."""
