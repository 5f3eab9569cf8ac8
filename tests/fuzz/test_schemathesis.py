"""The bounded fuzz pass of CI: schemathesis over every operation of a real control plane.

A fixed seed and a few dozen examples per operation (``tests.fuzz.harness``); the longer
release-check run is in README ("Fuzzing"). schemathesis runs its default checks — no server
errors, responses conforming to the documented schema, status codes, content types, headers,
schema-valid data accepted and invalid data refused, auth enforced, undeclared methods refused.
"""

from __future__ import annotations

import pytest

from tests.fuzz import harness

pytestmark = pytest.mark.slow


@pytest.mark.timeout(900)
def test_fuzzing_every_operation_finds_no_failure() -> None:
    result = harness.run(seed=harness.SEED, max_examples=harness.MAX_EXAMPLES)
    summary = (
        f"fuzz: {result.operations} of {result.documented} operations,"
        f" {result.examples} test cases, {result.seconds:.0f} s"
    )
    print(summary)
    assert result.returncode == 0, result.output[-30000:]
    assert result.operations == result.documented, result.output[-3000:]
    assert result.examples is not None, summary
    assert result.examples > 20 * result.documented, summary
