"""``mmctl``: the operator CLI over the API, plus a few local admin commands (SPEC §18)."""
