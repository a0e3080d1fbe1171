"""Benchmark of the webhook service against a stateless Stripe-sample receiver.

Run it with ``make bench`` (full run) or ``.venv/bin/python bench/run.py --quick``.
See ``bench/README.md``.
"""
