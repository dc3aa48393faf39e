"""Test harness: a test-only ARI client, real calls/conferences in Asterisk, and audio measurements."""
