"""ledger.jobs.job_key: the content key of a job, computed once per shared Notify."""

from __future__ import annotations

import msgspec

from ledger import jobs
from ledger.jobs import job_key
from protocol.messages import Notify, parse_notify

PREVHASH = "171592f223740e92d223f6e68bff25279af7ac4f2246451e0000000200000000"


def notify(job_id: str = "j1", coinb2: str = "bb02", clean: bool = True) -> Notify:
    return parse_notify(
        [job_id, PREVHASH, "aa01", coinb2, ["11" * 32, "22" * 32], "20000000", "1d00ffff", "64b3f3ec", clean]
    )


def test_the_key_is_the_content_whatever_the_object_the_job_id_or_clean_jobs() -> None:
    one = notify()
    assert job_key(one) == job_key(one) == jobs.content_key(one)
    assert job_key(notify()) == job_key(one)  # an equal notify, another object
    assert job_key(notify(job_id="j2", clean=False)) == job_key(one)  # same work, renamed
    assert job_key(notify(coinb2="bb03")) != job_key(one)
    upper = msgspec.structs.replace(one, coinb2="BB02")
    assert job_key(upper) == job_key(one)  # hex case is not content


def test_the_remembered_keys_are_bounded_and_never_confuse_two_objects() -> None:
    seen = [notify(coinb2=f"{i:04x}") for i in range(3 * job_key.kept)]
    keys = [job_key(n) for n in seen]
    assert len(set(keys)) == len(seen)
    assert len(job_key) <= job_key.kept
    # Forgotten ones are computed again, the same.
    assert [job_key(n) for n in seen] == keys == [jobs.content_key(n) for n in seen]
