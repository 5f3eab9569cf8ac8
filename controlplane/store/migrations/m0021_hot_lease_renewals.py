"""Lease renewals touch no indexed column: PostgreSQL updates them in place (HOT), SQLite skips
an index rewrite.

A plain heartbeat renewal writes ``lease_expires_at``, ``last_checked_at`` and
``last_healthy_at``. Two indexes read ``lease_expires_at``: the sweeper's lease index, and the
retention index's key expression. While any index reads a column a renewal changes, PostgreSQL
must write a new entry into every index of the table (six) for every renewed endpoint, and leave
as many dead ones for vacuum; with none, the new row version stays on its page and no index is
touched (a heap-only tuple).

- The lease index goes: the sweeper's two statements that used it (the storm guard's count and
  the expiry) read every live agent endpoint anyway, once per sweep interval; they now scan the
  table (a few milliseconds per 20,000 endpoints, ``benchmarks/heartbeat_load.py``).
- The retention index keeps its rows (unreachable agent endpoints: the few whose lease ended) but
  is keyed by ``updated_at``; the retention sweep walks that small index and checks its exact
  condition, ``COALESCE(lease_expires_at, updated_at) < cutoff``, on each row.
"""

SQL = """
DROP INDEX runtime_endpoints_lease;
DROP INDEX runtime_endpoints_retention;
CREATE INDEX runtime_endpoints_unreachable ON runtime_endpoints (updated_at)
    WHERE source = 'agent' AND status = 'unreachable';
"""
