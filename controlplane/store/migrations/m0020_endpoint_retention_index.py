"""Retention (SPEC §7 step 5) runs every sweep: index its candidates so it never scans the table.

Unreachable agent endpoints, by the moment their lease ended or was cleared (``updated_at`` when
revocation cleared it); the sweep's ``DELETE`` uses this exact expression.
"""

SQL = """
CREATE INDEX runtime_endpoints_retention ON runtime_endpoints
    ((COALESCE(lease_expires_at, updated_at)))
    WHERE source = 'agent' AND status = 'unreachable';
"""
