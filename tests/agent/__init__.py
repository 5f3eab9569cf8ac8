"""Tests of the mm-agent daemon (SPEC §17), mostly against real processes and loopback fakes."""
