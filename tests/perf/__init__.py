"""Tests of hyperflexis.perf."""
