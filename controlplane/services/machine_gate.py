"""The machine lookup and gate every ``/machines/:machineId/...`` route goes through (SPEC §1.6 5–6).

Reads find any machine, archived ones included. Writes lock the machine row for the rest of their
transaction and are refused unless the machine's identity is verified and its status is active.
"""

from __future__ import annotations

from controlplane.errors import MachineNotActivated, MachineNotActive, NotFound
from controlplane.store import machines
from controlplane.store.base import Connection, Row


def identity_verified(machine: Row) -> bool:
    return machine["identity_proof"] is not None or machine["identity_attestation"] is not None


async def find_machine(conn: Connection, machine_id: str) -> Row:
    """Step 5: the machine, or ``404 NOT_FOUND``."""
    machine = await machines.get(conn, machine_id)
    if machine is None:
        raise NotFound(f"machine {machine_id} not found")
    return machine


def check_gate(machine: Row) -> None:
    """Step 6: ``409 MACHINE_NOT_ACTIVATED`` then ``409 MACHINE_NOT_ACTIVE``."""
    if not identity_verified(machine):
        raise MachineNotActivated(f"machine {machine['id']} has no verified identity")
    if machine["status"] != "active":
        raise MachineNotActive(f"machine {machine['id']} is {machine['status']}, not active")


async def lock_machine(conn: Connection, machine_id: str, *, gated: bool = True) -> Row:
    """Inside a write transaction: steps 5 and 6, holding the machine row until commit."""
    machine = await machines.get(conn, machine_id, lock=True)
    if machine is None:
        raise NotFound(f"machine {machine_id} not found")
    if gated:
        check_gate(machine)
    return machine
