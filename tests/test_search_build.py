"""A candidate's build that raises becomes its row's status in one place (search/build.py), for
the recipe runner and the torch-side recovery alike: the search goes on without it."""

from deploykit.errors import InputError, VerificationError
from deploykit.search.build import build_failed
from deploykit.search.candidates import Candidate
from deploykit.search.result import Row


def _raised(e: Exception) -> Exception:
    def step_that_breaks():
        raise e

    try:
        step_that_breaks()
    except Exception as caught:
        return caught
    raise AssertionError("unreachable")


def test_a_failed_verification_rejects_and_a_user_error_fails_with_its_message():
    row = Row(Candidate("prune"))
    build_failed(row, _raised(VerificationError("cosine 0.41 < 0.99 after prune-channels")))
    assert (row.status, row.reason) == ("rejected", "cosine 0.41 < 0.99 after prune-channels")
    row = Row(Candidate("prune"))
    build_failed(row, _raised(InputError("a torch-prune candidate needs the torch source")))
    assert (row.status, row.reason) == ("failed", "a torch-prune candidate needs the torch source")


def test_a_bug_fails_the_candidate_with_type_first_line_and_frame():
    row = Row(Candidate("lowrank"))
    build_failed(row, _raised(ValueError("shape mismatch\n  at node Conv_3")))
    assert row.status == "failed"
    assert row.reason == "ValueError: shape mismatch (step_that_breaks)"
