"""A PostgreSQL server that stops answering (bytes held, nothing reset): 503 soon, no
worker killed, /readyz 503, and recovery by itself once it answers again."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from tests.reliability.support import decode, deliver
from tests.reliability.test_outage import (
    assert_applied_once,
    assert_recovered,
    deliver_all,
    new_subscription,
    readiness,
    retry_until_acknowledged,
    stream_across_cut,
)
from tests.servers import http, running_service
from tests.tcp_proxy import TcpProxy
from webhook_service.db import Database

# "Within about 5 s of the request starting"; generous for a loaded machine, far below
# gunicorn's 30 s worker timeout, which is what answered (or rather did not) before.
ANSWER_WITHIN_S = 7.0


def assert_soon_unavailable(results: list[tuple[int, dict[str, object], float]]) -> None:
    for status, body, elapsed in results:
        assert (status, body.get("error")) == (503, "SERVICE_UNAVAILABLE"), body
        assert elapsed < ANSWER_WITHIN_S, f"503 took {elapsed:.1f}s"


@pytest.mark.slow
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_stalled_postgres_answers_503_within_seconds_and_recovers(
    env: dict[str, str], database: Database, tmp_path: Path
) -> None:
    url = make_url(database.url)
    log_path = tmp_path / "gunicorn.log"
    with TcpProxy((url.host or "127.0.0.1", url.port or 5432)) as proxy:
        via_proxy = url.set(port=proxy.port).render_as_string(hide_password=False)
        service_env = {**env, "DATABASE_URL": via_proxy}
        with running_service(service_env, workers=2, log_path=log_path) as base_url:
            warm_up = new_subscription()
            assert deliver(base_url, warm_up)[0] == 200
            assert readiness(base_url) == {200}

            streamed = [new_subscription() for _ in range(20)]
            during = [new_subscription() for _ in range(3)]
            # In flight when it stalls, and sent while it is stalled: each one answered.
            statuses, results = stream_across_cut(
                base_url, streamed, proxy.stall, cut_after=6, during=[*during, warm_up]
            )
            assert_soon_unavailable(results)
            assert 0 not in statuses.values(), statuses  # every in-flight one got an answer
            assert_soon_unavailable(deliver_all(base_url, during))
            started = time.monotonic()
            ready = http("GET", base_url + "/readyz", timeout=ANSWER_WITHIN_S + 5)
            assert time.monotonic() - started < ANSWER_WITHIN_S
            assert ready[0] == 503, ready
            assert decode(ready[2])["checks"]["database"].startswith("unreachable")

            proxy.restore()
            assert_recovered(base_url, 2)
            retry_until_acknowledged(base_url, [*streamed, *during], statuses)
            assert readiness(base_url) == {200}
            status, body = deliver(base_url, warm_up)
            assert (status, body["outcome"]) == (200, "duplicate")
            print(
                f"postgres stall: streamed {len(statuses)}, answers "
                f"{dict(Counter(statuses.values()))}; during: {len(results)} all 503, "
                f"slowest {max(r[2] for r in results):.1f}s"
            )
    log_text = log_path.read_text("utf-8", "replace")
    assert "WORKER TIMEOUT" not in log_text
    assert_applied_once(database, [warm_up, *streamed, *during])
