"""Reliability tests: concurrency, crashes, outages, hostile input, shutdown."""
