"""Property: the read side is a function of the *set* of events, never of their order.

Hypothesis generates lifecycles for several users (subscriptions walking Stripe's status
graph, invoices ending paid, void or uncollectible, entitlement summaries, some naming the
previous one as "before" in the same second, observations, links of every kind, metadata
moving a customer to another user, deleted customers, one-time purchases with partial and
full refunds and disputes won or lost, a dispute sometimes before its charge), sprinkles exact and logical
duplicates and same-second ties, then checks that a shuffled delivery gives identical
entitlements, invoices and history, and that history's one pass agrees with `evaluate`.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from billing_ledger.projections.history import _Sweep, changes, changes_until
from billing_ledger.projections.invoices import user_invoices
from billing_ledger.projections.policy import evaluate
from tests.unit.builders import (
    DAY,
    Json,
    M,
    T,
    active_entitlement,
    charge,
    checkout_session,
    customer,
    dispute,
    event,
    inputs,
    invoice_event,
    lifetime_plans,
    link,
    observation,
    payment_session,
    sale,
    sub_event,
    summary,
    summary_event,
)

PLANS = lifetime_plans()
USERS = ("u_1", "u_2", "u_3")
QUERY_TIMES = (T - 1, T, T + 1, T + DAY, T + 8 * DAY, T + 25 * DAY, T + M + 3 * DAY, T + 3 * M)

# Stripe's subscription graph (STRIPE-SEMANTICS 1.2), including the two-way pairs.
NEXT = {
    "incomplete": ("active", "incomplete_expired"),
    "trialing": ("active", "paused", "past_due", "canceled"),
    "active": ("active", "past_due", "paused", "canceled"),
    "past_due": ("past_due", "active", "unpaid", "canceled"),
    "unpaid": ("active", "canceled"),
    "paused": ("active", "canceled"),
}
STEPS = st.sampled_from((0, 0, 1, DAY, 6 * DAY, 20 * DAY))  # zeros make same-second ties
PRICES = st.lists(
    st.sampled_from(("price_basic", "price_pro", "price_addon", "price_x")),
    min_size=1,
    max_size=2,
    unique=True,
)
FEATURES = st.lists(st.sampled_from(("core", "pro", "export")), max_size=3, unique=True)


@st.composite
def subscription_lifecycle(draw: st.DrawFn, sub_id: str, cus: str) -> list[Json]:
    """A walk through the status graph, one event per step."""
    prices = tuple(draw(PRICES))
    status = draw(st.sampled_from(("incomplete", "trialing", "active")))
    t = T + draw(STEPS)
    common = {"id": sub_id, "customer": cus, "prices": prices, "period": (t, t + M)}
    found = [sub_event("created", f"evt_{sub_id}_0", t, None, status=status, **common)]
    for n in range(1, draw(st.integers(0, 4)) + 1):
        if status not in NEXT:
            break
        after = draw(st.sampled_from(NEXT[status]))
        t += draw(STEPS)
        witness = {"status": status} if draw(st.booleans()) else None
        ended = t if after == "canceled" else None
        cancel_at = draw(st.sampled_from((None, None, t + 5 * DAY)))
        kind = "deleted" if after == "canceled" else "updated"
        fields = common | {"status": after, "ended_at": ended, "cancel_at": cancel_at}
        found.append(sub_event(kind, f"evt_{sub_id}_{n}", t, witness, **fields))
        status = after
    return found


@st.composite
def invoice_lifecycle(draw: st.DrawFn, sub_id: str, cus: str) -> list[Json]:
    """One to three invoices of the subscription, each draft -> open -> failed attempts ->
    paid, void or uncollectible (or a draft deleted), at drawn times."""
    found: list[Json] = []
    for k in range(draw(st.integers(1, 3))):
        found += draw(one_invoice(sub_id, cus, k))
    return found


@st.composite
def one_invoice(draw: st.DrawFn, sub_id: str, cus: str, k: int) -> list[Json]:
    """draft -> open -> failed attempts -> an end, at drawn times."""
    iid = f"in_{sub_id}_{k}"
    created = T + draw(st.sampled_from((0, 0, DAY, M)))  # ties make the id decide "latest"
    inv = {"id": iid, "customer": cus, "subscription": sub_id, "created": created}
    ends = ("paid", "voided", "marked_uncollectible", "deleted", None)
    t = T + draw(STEPS)
    found = [invoice_event("created", f"evt_{iid}_0", t, **inv)]
    end = draw(st.sampled_from(ends))
    if end == "deleted":  # a draft removed for good: no longer anyone's latest invoice
        return [*found, invoice_event("deleted", f"evt_{iid}_del", t + draw(STEPS), **inv)]
    for n in range(1, draw(st.integers(0, 3)) + 1):
        t += draw(STEPS)
        found.append(
            invoice_event(
                "payment_failed", f"evt_{iid}_f{n}", t, status="open", attempt_count=n, **inv
            )
        )
    if end is not None:
        status = {"paid": "paid", "voided": "void"}.get(end, "uncollectible")
        paid = 2000 if end == "paid" else 0
        t += draw(STEPS)
        found.append(
            invoice_event(end, f"evt_{iid}_end", t, status=status, amount_paid=paid, **inv)
        )
        if end == "marked_uncollectible" and draw(st.booleans()):  # paid after all
            t += draw(STEPS)
            paid_late = inv | {"status": "paid", "amount_paid": 2000}
            found.append(invoice_event("paid", f"evt_{iid}_late", t, **paid_late))
    return found


@st.composite
def customer_events(draw: st.DrawFn, user: str, cus: str) -> list[Json]:
    """A user's link, subscriptions, invoices, summaries and perhaps deletion."""
    t = T + draw(STEPS)
    how = draw(st.sampled_from(("checkout", "ledger", "metadata")))
    found = [
        {
            "checkout": event(
                "checkout.session.completed",
                checkout_session(id=f"cs_{cus}", customer=cus, client_reference_id=user),
                id=f"evt_cs_{cus}",
                created=t,
            ),
            "ledger": link(user_id=user, customer=cus, id=f"evt_link_{cus}", created=t),
            "metadata": event(
                "customer.updated",
                customer(id=cus, app_user_id=user),
                id=f"evt_cu_{cus}",
                created=t,
            ),
        }[how]
    ]
    for i in range(draw(st.integers(1, 2))):
        sub_id = f"sub_{cus}_{i}"
        found += draw(subscription_lifecycle(sub_id, cus))
        found += draw(invoice_lifecycle(sub_id, cus))
    before: list[str] | None = None
    when = T
    for i in range(draw(st.integers(0, 3))):
        keys = draw(FEATURES)
        obj = summary(*keys, customer=cus, has_more=draw(st.booleans()))
        when += draw(STEPS)
        # A summary may name the one before as its "before" (a witness), often in its second.
        named = before is not None and draw(st.booleans())
        previous = {"entitlements": {"data": [active_entitlement(k) for k in before or ()]}}
        found.append(
            event(
                "entitlements.active_entitlement_summary.updated",
                obj,
                id=f"evt_sum_{cus}_{draw(st.integers(0, 9))}{i}",
                created=when,
                previous=previous if named else None,
            )
        )
        before = keys
    if draw(st.integers(0, 3)) == 0:
        found += draw(metadata_moves(user, cus, t))
    if draw(st.booleans()):
        found += draw(purchase_lifecycle(user, cus))
    if draw(st.booleans()):
        observed = summary(*draw(FEATURES), customer=cus)
        found.append(observation(observed, id=f"obs_{cus}", observed_at=T + draw(STEPS)))
    if draw(st.integers(0, 5)) == 0:
        gone = customer(id=cus, deleted=True)
        found.append(event("customer.deleted", gone, id=f"evt_cd_{cus}", created=T + draw(STEPS)))
    return found


@st.composite
def purchase_lifecycle(draw: st.DrawFn, user: str, cus: str) -> list[Json]:
    """A one-time purchase: the sale we record, the session paid at once or later (or never),
    its charge, refunds partial or full, a dispute won or lost."""
    cs, pi, ch = f"cs_{cus}_p", f"pi_{cus}", f"ch_{cus}"
    t = T + draw(STEPS)
    session = {"id": cs, "customer": cus, "client_reference_id": user, "payment_intent": pi}
    price = draw(st.sampled_from(("price_lifetime", "price_lifetime", "price_pro", None)))
    found = [sale(session=cs, customer=cus, user_id=user, id=f"lgr_sale_{cus}", created=t)]
    paid_now = draw(st.booleans())
    status = "paid" if paid_now else "unpaid"
    found.append(
        event(
            "checkout.session.completed",
            payment_session(price=price, payment_status=status, **session),
            id=f"evt_csp_{cus}",
            created=t,
        )
    )
    if not paid_now:
        t += draw(STEPS)
        outcome = draw(st.sampled_from(("succeeded", "failed")))
        paid = "paid" if outcome == "succeeded" else "unpaid"
        found.append(
            event(
                f"checkout.session.async_payment_{outcome}",
                payment_session(price=price, payment_status=paid, **session),
                id=f"evt_csa_{cus}",
                created=t,
            )
        )
    found.append(
        event(
            "charge.succeeded",
            charge(id=ch, customer=cus, payment_intent=pi),
            id=f"evt_ch_{cus}",
            created=t,
        )
    )
    refunded = 0
    for n in range(draw(st.integers(0, 2))):
        refunded = min(9900, refunded + draw(st.sampled_from((1000, 9900))))
        t += draw(STEPS)
        obj = charge(id=ch, customer=cus, payment_intent=pi, amount_refunded=refunded)
        found.append(event("charge.refunded", obj, id=f"evt_rf_{cus}_{n}", created=t))
    if draw(st.booleans()):
        when = T + draw(STEPS)  # perhaps before the charge is known
        opened = dispute(id=f"dp_{cus}", charge=ch, payment_intent=pi, status="needs_response")
        found.append(event("charge.dispute.created", opened, id=f"evt_dp_{cus}", created=when))
        closed = dispute(
            id=f"dp_{cus}",
            charge=ch,
            payment_intent=pi,
            status=draw(st.sampled_from(("won", "lost"))),
        )
        found.append(
            event("charge.dispute.closed", closed, id=f"evt_dc_{cus}", created=when + draw(STEPS))
        )
    return found


@st.composite
def metadata_moves(draw: st.DrawFn, user: str, cus: str, t: int) -> list[Json]:
    """The customer's (or a subscription's) metadata moving to other users and back."""
    found: list[Json] = []
    owner = user
    for n in range(draw(st.integers(1, 3))):
        t += draw(STEPS)
        moved_to = draw(st.sampled_from(USERS))
        previous = {"metadata": {"app_user_id": owner}} if draw(st.booleans()) else None
        if draw(st.booleans()):
            obj = customer(id=cus, app_user_id=moved_to)
            found.append(
                event("customer.updated", obj, id=f"evt_mv_{cus}_{n}", created=t, previous=previous)
            )
        else:
            fields = {"id": f"sub_{cus}_0", "customer": cus, "app_user_id": moved_to}
            found.append(sub_event("updated", f"evt_mvs_{cus}_{n}", t, previous, **fields))
        owner = moved_to
    return found


@st.composite
def ledgers(draw: st.DrawFn) -> list[Json]:
    """Events of several users, with exact and logical duplicates."""
    found: list[Json] = []
    for n, user in enumerate(USERS[: draw(st.integers(1, len(USERS)))]):
        found += draw(customer_events(user, f"cus_{n}"))
    # A summary at a tie with another summary, to exercise the ambiguous path.
    if draw(st.booleans()):
        found.append(summary_event("evt_sum_tie", T + DAY, *draw(FEATURES)))
    duplicated: list[Any] = draw(st.lists(st.sampled_from(found), max_size=4))
    twins = [
        dict(e, id=f"{e['id']}_twin") for e in draw(st.lists(st.sampled_from(found), max_size=3))
    ]
    return found + duplicated + twins


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_delivery_order_gives_the_same_entitlements_invoices_and_history(
    data: st.DataObject,
) -> None:
    events = data.draw(ledgers())
    shuffled = data.draw(st.permutations(events))
    for user in USERS:
        mine, theirs = inputs(user, events), inputs(user, shuffled)
        for at in QUERY_TIMES:
            assert evaluate(mine, PLANS, at) == evaluate(theirs, PLANS, at)
            assert user_invoices(mine, at) == user_invoices(theirs, at)
        until = T + 2 * M
        assert changes(mine, PLANS, until) == changes(theirs, PLANS, until)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_history_agrees_with_evaluate_after_every_change(data: st.DataObject) -> None:
    events = data.draw(ledgers())
    for user in USERS:
        mine = inputs(user, events)
        for change in changes(mine, PLANS, T + 2 * M):
            assert evaluate(mine, PLANS, change.at).features == change.features_after
            assert evaluate(mine, PLANS, change.at - 1).features == change.features_before


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_history_s_one_pass_evaluates_exactly_as_the_policy_does(data: st.DataObject) -> None:
    events = data.draw(ledgers())
    for user in USERS:
        mine = inputs(user, events)
        times = sorted({s.created for s in mine.snapshots} | set(QUERY_TIMES))
        sweep = _Sweep(mine, PLANS)
        for at in times:
            assert sweep.evaluate(at)[0] == evaluate(mine, PLANS, at)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_history_s_last_evaluation_is_the_policy_s_at_its_end(data: st.DataObject) -> None:
    events = data.draw(ledgers())
    for user in USERS:
        mine = inputs(user, events)
        for until in QUERY_TIMES:
            found, at_end = changes_until(mine, PLANS, until)
            assert found == changes(mine, PLANS, until)
            assert at_end == evaluate(mine, PLANS, until)  # what the change feed records


def test_the_one_pass_hands_latest_back_when_the_latest_invoice_is_deleted() -> None:
    failed = {"id": "in_a", "customer": "cus_0", "created": T, "status": "open"}
    draft = {"id": "in_b", "customer": "cus_0", "created": T + DAY}
    events = [
        link(user_id="u_1", customer="cus_0", id="evt_l", created=T),
        sub_event("created", "evt_s", T, customer="cus_0"),
        invoice_event("payment_failed", "evt_f", T, attempt_count=1, **failed),
        invoice_event("created", "evt_d", T + DAY, **draft),
        invoice_event("deleted", "evt_x", T + 2 * DAY, **draft),
    ]
    mine = inputs("u_1", events)
    sweep = _Sweep(mine, PLANS)
    for at in (T, T + DAY, T + 2 * DAY):
        assert sweep.evaluate(at)[0] == evaluate(mine, PLANS, at)
    assert evaluate(mine, PLANS, T + 2 * DAY).warnings == ("payment_failed",)
