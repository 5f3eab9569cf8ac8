"""mmctl command group (to be implemented)."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add this group's commands to the top-level subparsers."""
    del sub


__all__ = ["argparse", "register"]
