"""The SQL views on SQLite and PostgreSQL: sets of rows, idempotent, tracked, swappable."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator

import psycopg
import pytest

from billing_ledger.ledger.canonical import Snapshot
from billing_ledger.ledger.store import Database, DatabaseUrl
from billing_ledger.projections.views import KEYS_PER_STATEMENT, PositionMovedError, Views
from tests.support.databases import postgres_url
from tests.unit.builders import (
    DAY,
    T,
    checkout_session,
    customer,
    event,
    invoice,
    link,
    snapshots,
    subscription,
)


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(DatabaseUrl.parse(database_url))
    yield database
    database.close()


@pytest.fixture
def views(db: Database) -> Views:
    created = Views(db)
    created.create()
    return created


def lifecycle() -> list[Snapshot]:
    """Two users' worth of events: u_1 on cus_1 through Checkout, u_2 on cus_2 by metadata."""
    return snapshots(
        [
            event("checkout.session.completed", checkout_session(), id="evt_cs", created=T),
            event("customer.subscription.created", subscription(), id="evt_s1", created=T),
            event("invoice.paid", invoice(status="paid", amount_paid=2000), id="evt_i1", created=T),
            event(
                "customer.subscription.updated",
                subscription(cancel_at_period_end=True),
                id="evt_s2",
                created=T + DAY,
                previous={"cancel_at_period_end": False},
            ),
            event(
                "customer.created", customer(id="cus_2", app_user_id="u_2"), id="evt_c2", created=T
            ),
            event(
                "customer.subscription.created",
                subscription(id="sub_2", customer="cus_2", prices=["price_basic"]),
                id="evt_s3",
                created=T,
            ),
            link(user_id="u_3", customer="cus_1", id="evt_link", created=T + 2 * DAY),
        ]
    )


def test_inputs_hold_the_users_links_and_every_snapshot_of_the_linked_customers(
    views: Views,
) -> None:
    views.apply(lifecycle(), 0, 7)
    inputs = views.load_inputs("u_1")
    assert [(row.customer_id, row.via) for row in inputs.links] == [("cus_1", "checkout_session")]
    assert sorted(s.event_id for s in inputs.snapshots) == [
        "evt_cs",
        "evt_i1",
        "evt_link",
        "evt_s1",
        "evt_s2",
    ]
    other = views.load_inputs("u_2")
    assert sorted(s.event_id for s in other.snapshots) == ["evt_c2", "evt_s3"]


def test_a_user_never_seen_has_no_inputs(views: Views) -> None:
    views.apply(lifecycle(), 0, 7)
    inputs = views.load_inputs("u_nobody")
    assert inputs.user_id == "u_nobody" and inputs.links == () and inputs.snapshots == ()


def test_a_customer_knows_every_user_linked_to_it(views: Views) -> None:
    views.apply(lifecycle(), 0, 7)
    assert views.users_of("cus_1") == ["u_1", "u_3"]
    assert views.users_of("cus_unknown") == []


def test_many_users_loaded_at_once_have_the_inputs_each_one_loaded_alone_has(
    views: Views,
) -> None:
    views.apply(lifecycle(), 0, 7)
    users = ["u_1", "u_2", "u_3", "u_nobody"]
    assert views.load_inputs_of(users) == {u: views.load_inputs(u) for u in users}
    assert views.users_of_customers(["cus_1", "cus_2", "cus_unknown"]) == {"u_1", "u_2", "u_3"}


def test_more_users_than_one_statement_names_are_loaded_in_several(views: Views) -> None:
    many = snapshots(
        [
            event(
                "customer.created",
                customer(id=f"cus_{n}", app_user_id=f"u_{n}"),
                id=f"evt_c{n}",
                created=T,
            )
            for n in range(KEYS_PER_STATEMENT + 5)
        ]
    )
    views.apply(many, 0, 1)
    users = [f"u_{n}" for n in range(KEYS_PER_STATEMENT + 5)]
    loaded = views.load_inputs_of(users)
    assert [loaded[u].snapshots[0].event_id for u in users] == [
        f"evt_c{n}" for n in range(KEYS_PER_STATEMENT + 5)
    ]
    customers = [f"cus_{n}" for n in range(KEYS_PER_STATEMENT + 5)]
    assert views.users_of_customers(customers) == set(users)


def test_loaded_snapshots_round_trip_exactly(views: Views) -> None:
    applied = lifecycle()
    views.apply(applied, 0, 7)
    loaded = {s.event_id: s for s in views.load_inputs("u_1").snapshots}
    for s in applied:
        if s.event_id in loaded:
            assert loaded[s.event_id] == s


def test_a_batch_applied_again_changes_no_row(views: Views) -> None:
    applied = lifecycle()
    views.apply(applied, 0, 7)
    first = views.rows()
    views.apply(applied, 7, 14)  # a second runner, or a batch re-read after a crash
    assert views.rows() == first
    assert views.position() == 14


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_rows_do_not_depend_on_arrival_order_or_batching(
    db: Database, views: Views, seed: int
) -> None:
    applied = lifecycle()
    views.apply(applied, 0, 1)
    shuffled = list(applied)
    random.Random(seed).shuffle(shuffled)
    other = views.shadow("_shuffled")
    other.create()
    position = 0
    while shuffled:
        size = random.Random(seed + position).randint(1, 3)
        other.apply(shuffled[:size], position, position + 1)
        shuffled, position = shuffled[size:], position + 1
    assert other.rows() == views.rows()
    assert other.rows().snapshots and other.rows().links


def test_a_batch_already_covered_is_refused_and_leaves_nothing(views: Views) -> None:
    applied = lifecycle()
    views.apply(applied[:2], 0, 5)
    with pytest.raises(PositionMovedError) as moved:
        views.apply(applied[2:], 0, 5)
    assert moved.value.tracked == 5
    assert len(views.rows().snapshots) == 2  # the refused rows were rolled back


def test_a_gap_before_the_batch_is_refused(views: Views) -> None:
    with pytest.raises(PositionMovedError) as moved:
        views.apply(lifecycle(), 3, 9)
    assert moved.value.tracked == 0
    assert views.rows().snapshots == () and views.position() == 0


def test_an_empty_batch_still_moves_the_position(views: Views) -> None:
    views.apply([], 0, 12)  # skipped events only: unknown types, other mode
    assert views.position() == 12


def test_a_shadow_promoted_replaces_the_live_rows_and_position_at_once(
    db: Database, views: Views
) -> None:
    applied = lifecycle()
    views.apply(applied[:2], 0, 2)
    for round_ in range(2):  # twice: the swapped tables' index names must be free again
        shadow = views.shadow("_replay")
        shadow.drop()
        shadow.create()
        shadow.apply(applied, 0, 10 + round_)
        expected = shadow.rows()
        views.promote(shadow)
        assert views.rows() == expected
        assert views.position() == 10 + round_
        assert [s.event_id for s in views.load_inputs("u_2").snapshots] == ["evt_c2", "evt_s3"]
    views.create()  # the live tables are whole: creating again is a no-op
    assert views.rows() == expected


def test_cached_inputs_are_dropped_once_a_batch_touches_the_users_customer(views: Views) -> None:
    applied = lifecycle()
    views.apply(applied[:1], 0, 1)
    first = views.inputs("u_1", 1)
    assert views.cached_inputs("u_1", 1) is first
    views.apply(applied[1:], 1, 7)
    assert views.cached_inputs("u_1", 7) is None
    assert len(views.inputs("u_1", 7).snapshots) == 5


def test_cached_inputs_outlive_batches_about_other_customers(views: Views) -> None:
    applied = lifecycle()
    views.apply(applied[:3], 0, 3)  # u_1's Checkout, subscription and invoice
    first = views.inputs("u_1", 3)
    others = [s for s in applied[3:] if s.event_id in ("evt_c2", "evt_s3")]  # cus_2 only
    views.apply(others[:1], 3, 4)
    views.apply(others[1:], 4, 6)
    assert views.cached_inputs("u_1", 6) is first
    assert views.cached_inputs("u_2", 6) is None  # never loaded


def test_a_new_link_of_the_user_drops_the_cached_inputs(views: Views) -> None:
    views.apply(lifecycle()[:3], 0, 3)
    views.inputs("u_3", 3)  # nobody yet: no links, no snapshots
    views.apply([s for s in lifecycle() if s.event_id == "evt_link"], 3, 4)
    assert views.cached_inputs("u_3", 4) is None
    assert views.inputs("u_3", 4).links[0].customer_id == "cus_1"


def test_batches_applied_by_another_process_drop_the_cached_inputs(
    db: Database, views: Views
) -> None:
    applied = lifecycle()
    views.apply(applied[:3], 0, 3)
    first = views.inputs("u_1", 3)
    elsewhere = Views(db)  # another process's views: this one cannot know what it touched
    elsewhere.apply([s for s in applied if s.event_id == "evt_c2"], 3, 4)
    assert views.cached_inputs("u_1", 4) is None
    assert views.inputs("u_1", 4) == first


def test_the_cache_forgets_the_oldest_user_when_full(views: Views) -> None:
    views.cache_size = 2
    for user in ("u_a", "u_b", "u_c"):
        views.inputs(user, 0)
    assert views.cached_inputs("u_a", 0) is None
    assert views.cached_inputs("u_c", 0) is not None


def test_the_cache_holds_at_most_its_budget_of_snapshots_and_forgets_the_least_used(
    views: Views,
) -> None:
    views.apply(lifecycle(), 0, 7)
    sizes = {user: len(views.inputs(user, 7).snapshots) for user in ("u_1", "u_2")}
    assert all(sizes.values())
    assert views.cached == (2, sizes["u_1"] + sizes["u_2"])
    views.cache_snapshots = max(sizes.values())  # room for one of them
    views.cached_inputs("u_1", 7)  # no reorder at the same position: u_1 stays the oldest
    views.inputs("u_nobody", 7)  # no snapshots; the bound forgets u_1, the oldest
    assert views.cached == (2, sizes["u_2"])
    assert views.cached_inputs("u_1", 7) is None
    assert views.cached_inputs("u_2", 7) is not None


@pytest.mark.parametrize("odd", ["\x00", "\\", "\\0", "\\\x00", "a\\\\0b\x00"])
def test_ids_with_nul_or_backslashes_round_trip_without_colliding(views: Views, odd: str) -> None:
    user = f"u{odd}".replace("\x00", "0")  # a user id with NUL is never linked (user_ids.py)
    twins = snapshots(
        [
            event(
                "checkout.session.completed",
                checkout_session(id=f"cs{odd}", customer=f"cus{odd}", client_reference_id=user),
                id=f"evt{odd}",
                created=T,
            ),
            event(
                "checkout.session.completed",
                checkout_session(id="cs_plain", customer="cus", client_reference_id="u"),
                id="evt_plain",
                created=T,
            ),
        ]
    )
    views.apply(twins, 0, 2)
    views.apply(twins, 2, 4)  # re-applied: the escaped keys still match themselves
    odd_inputs = views.load_inputs(user)
    assert [(r.user_id, r.customer_id, r.event_id) for r in odd_inputs.links] == [
        (user, f"cus{odd}", f"evt{odd}")
    ]
    assert [s.object_id for s in odd_inputs.snapshots] == [f"cs{odd}"]
    assert [s.object_id for s in views.load_inputs("u").snapshots] == ["cs_plain"]
    assert views.users_of(f"cus{odd}") == [user]
    assert views.load_inputs_of([user, "u"]) == {user: odd_inputs, "u": views.load_inputs("u")}
    assert views.users_of_customers([f"cus{odd}"]) == {user}
    assert {row[3] for row in views.rows().snapshots} == {f"evt{odd}", "evt_plain"}


@pytest.fixture
def pg_url() -> Iterator[str]:
    yield from postgres_url()


@pytest.mark.postgres
def test_creating_views_that_exist_takes_no_lock_a_running_batch_holds(pg_url: str) -> None:
    # A runner applying a batch holds ROW EXCLUSIVE on the view tables; CREATE INDEX IF NOT
    # EXISTS would wait for it (SHARE), and a command starting then deadlocked with it.
    url = pg_url
    db = Database(DatabaseUrl.parse(url))
    Views(db).create()
    again = Views(Database(DatabaseUrl.parse(url)))
    with psycopg.connect(DatabaseUrl.parse(url).conninfo()) as batch:
        batch.execute(f"LOCK TABLE {again.snapshots}, {again.current} IN ROW EXCLUSIVE MODE")
        done = threading.Thread(target=again.create, daemon=True)
        done.start()
        done.join(timeout=30)
        assert not done.is_alive(), "create() waited for the batch's lock"
    again.db.close()
    db.close()
