"""The association state machine: every (state, input) pair, and the outcomes that matter."""

from __future__ import annotations

import pytest

from probe.dicom import association as A
from probe.dicom import pdu as P

UI = P.UserInformation()


def rq(ts=1.0, calling=b"CT_REMOTE1      ", called=b"PACS_MAIN       "):
    return P.AssociateRequest(ts, ts, 1, called, calling, "1.2.840.10008.3.1.1.1", (), UI)


def ac(ts=1.5, calling=b"CT_REMOTE1      ", called=b"PACS_MAIN       "):
    return P.AssociateAccept(ts, ts, 1, called, calling, "1.2.840.10008.3.1.1.1", (), UI)


EVENTS = {
    A.RQ: lambda: rq(),
    A.AC: lambda: ac(),
    A.RJ: lambda: P.AssociateReject(1.5, 1, 1, 3),
    A.PDATA: lambda: P.PDataTF(2.0, 100),
    A.RELEASE_RQ: lambda: P.ReleaseRequest(3.0),
    A.RELEASE_RP: lambda: P.ReleaseReply(3.5),
    A.ABORT: lambda: P.Abort(3.0, 2, 1),
}
# Inputs that, from each state, lead the machine there (from the requestor = client side).
PATH_TO = {
    A.IDLE: [],
    A.REQUESTED: [(A.RQ, True)],
    A.ESTABLISHED: [(A.RQ, True), (A.AC, False)],
    A.RELEASING: [(A.RQ, True), (A.AC, False), (A.RELEASE_RQ, True)],
    A.COLLISION: [(A.RQ, True), (A.AC, False), (A.RELEASE_RQ, True), (A.RELEASE_RQ, False)],
    A.DONE: [(A.RQ, True), (A.AC, False), (A.RELEASE_RQ, True), (A.RELEASE_RP, False)],
}
# The side each input naturally comes from once the requestor is the client.
NATURAL_SIDE = {A.RQ: True, A.AC: False, A.RJ: False, A.PDATA: True, A.RELEASE_RQ: False,
                A.RELEASE_RP: False, A.ABORT: True}


def machine_in(state: str, from_syn: bool = True) -> tuple[A.AssociationMachine, list]:
    m = A.AssociationMachine("198.19.1.21:40000", "198.18.0.10:104", from_syn=from_syn)
    out: list = []
    for inp, from_client in PATH_TO[state]:
        m.pdu(EVENTS[inp](), from_client, out)
    assert m.state == state
    return m, out


def feed(m: A.AssociationMachine, inp: str, out: list) -> None:
    if inp == A.CLOSED:
        m.closed(9.0, out)
    elif inp == A.TIMEOUT:
        m.timeout(9.0, out)
    elif inp == A.END:
        m.end(9.0, out)
    else:
        m.pdu(EVENTS[inp](), NATURAL_SIDE[inp], out)


def test_table_covers_every_state_and_input():
    assert set(A.TRANSITIONS) == {(s, i) for s in A.STATES for i in A.INPUTS}
    for (state, inp), (action, nxt) in A.TRANSITIONS.items():
        assert nxt is None or nxt in A.STATES
        assert action in ("ignore", "violation") or hasattr(A.AssociationMachine, "_" + action), action


@pytest.mark.parametrize("state,inp", sorted(A.TRANSITIONS))
def test_every_pair_does_what_the_table_says(state, inp):
    m, out = machine_in(state)
    out.clear()
    feed(m, inp, out)
    action, nxt = A.TRANSITIONS[(state, inp)]
    if action == "ignore":
        assert m.state == state and out == []
    elif action == "violation":
        assert m.state == state
        assert [type(n) for n in out] == [A.ProtocolViolation]
    else:
        assert m.state == nxt
        if nxt == A.DONE:
            assert isinstance(out[-1], A.AssociationEnded)
            assert m.current.outcome in A.OUTCOMES


def outcome_of(steps, from_syn=True):
    m = A.AssociationMachine("c:1", "s:104", from_syn=from_syn)
    out: list = []
    for step in steps:
        if isinstance(step, str):
            feed(m, step, out)
        else:
            event, from_client = step
            m.pdu(event, from_client, out)
    ended = [n.association for n in out if isinstance(n, A.AssociationEnded)]
    return m, out, ended


def test_reject_is_counted_with_setup_time():
    m, out, ended = outcome_of([(rq(ts=10.0), True), (P.AssociateReject(10.25, 1, 1, 3), False), A.CLOSED])
    (a,) = ended
    assert a.outcome == A.REJECTED and a.reject == (1, 1, 3)
    assert a.setup_seconds == pytest.approx(0.25)
    kinds = [type(n) for n in out]
    assert kinds == [A.AssociationOpened, A.AssociationRequested, A.AssociationRejected, A.AssociationEnded]


def test_accept_release():
    _, out, (a,) = outcome_of([(rq(), True), (ac(ts=1.1), False), (P.ReleaseRequest(2.0), True),
                               (P.ReleaseReply(2.1), False), A.CLOSED])
    assert a.outcome == A.RELEASED and a.setup_seconds == pytest.approx(0.1)
    assert sum(isinstance(n, A.ReleaseCompleted) for n in out) == 1


def test_release_collision_counts_one_release():
    _, out, (a,) = outcome_of([(rq(), True), (ac(), False), (P.ReleaseRequest(2.0), True),
                               (P.ReleaseRequest(2.0), False), (P.ReleaseReply(2.1), False),
                               (P.ReleaseReply(2.1), True), A.CLOSED])
    assert a.outcome == A.RELEASED
    assert sum(isinstance(n, A.ReleaseCompleted) for n in out) == 1
    assert not any(isinstance(n, A.ProtocolViolation) for n in out)


def test_same_side_release_rq_twice_is_a_violation_not_a_collision():
    m, out, _ = outcome_of([(rq(), True), (ac(), False), (P.ReleaseRequest(2.0), True), (P.ReleaseRequest(2.1), True)])
    assert m.state == A.RELEASING
    assert any(isinstance(n, A.ProtocolViolation) for n in out)


def test_closed_after_accept_is_ended_without_release():
    _, out, (a,) = outcome_of([(rq(), True), (ac(), False), (P.PDataTF(2.0, 10), True), A.CLOSED])
    assert a.outcome == A.ENDED_WITHOUT_RELEASE
    assert sum(isinstance(n, A.ClosedWithoutRelease) for n in out) == 1


def test_unanswered_rq_is_no_response_on_close_and_timeout_but_incomplete_at_capture_end():
    assert outcome_of([(rq(), True), A.CLOSED])[2][0].outcome == A.NO_RESPONSE
    assert outcome_of([(rq(), True), A.TIMEOUT])[2][0].outcome == A.NO_RESPONSE
    _, out, (a,) = outcome_of([(rq(), True), A.END])
    assert a.outcome == A.INCOMPLETE and not any(isinstance(n, A.NoResponse) for n in out)


def test_loss_never_becomes_a_wrong_outcome():
    # The RJ may have been in the lost bytes: not "no-response".
    m = A.AssociationMachine("c:1", "s:104", from_syn=True)
    out: list = []
    m.pdu(rq(), True, out)
    m.lost()
    m.closed(5.0, out)
    assert m.current.outcome == A.INCOMPLETE and not any(isinstance(n, A.NoResponse) for n in out)
    # A release may have been lost: not "ended-without-release".
    m = A.AssociationMachine("c:1", "s:104", from_syn=True)
    out = []
    m.pdu(rq(), True, out)
    m.pdu(ac(), False, out)
    m.lost()
    m.closed(5.0, out)
    assert m.current.outcome == A.INCOMPLETE and not any(isinstance(n, A.ClosedWithoutRelease) for n in out)


def test_abort_phase_and_sender():
    _, out, (a,) = outcome_of([(rq(), True), (P.Abort(1.2, 2, 2), False)])
    assert a.abort == ("acceptor", 2, 2, "setup")
    _, out, (a,) = outcome_of([(rq(), True), (ac(), False), (P.Abort(3.0, 0, 0), True)])
    assert a.abort == ("requestor", 0, 0, "established")
    # An A-ABORT on a connection seen from its SYN but before any RQ (e.g. junk sent to the SCP).
    _, out, (a,) = outcome_of([(P.Abort(1.0, 2, 1), False)], from_syn=True)
    assert a.abort == ("acceptor", 2, 1, "setup") and a.rq_seen is False
    # Picked up mid-stream: an abort with nothing else seen is taken as established.
    _, out, (a,) = outcome_of([(P.Abort(1.0, 0, 0), True)], from_syn=False)
    assert a.abort[3] == "established"


def test_mid_stream_adoption_keeps_titles_unknown():
    _, out, (a,) = outcome_of([(P.PDataTF(1.0, 10), True), (P.ReleaseRequest(2.0), True),
                               (P.ReleaseReply(2.1), False), A.CLOSED], from_syn=False)
    assert a.outcome == A.RELEASED and a.rq_seen is False and a.calling_ae is None
    assert not any(isinstance(n, A.AssociationRequested) for n in out)


def test_release_rp_counts_even_when_its_rq_was_lost():
    _, out, (a,) = outcome_of([(rq(), True), (ac(), False), (P.ReleaseReply(3.0), False)])
    assert a.outcome == A.RELEASED


def test_accept_without_rq_takes_titles_from_the_ac_and_flips_roles():
    # The RQ was lost; the AC arrives from the TCP client side (roles were guessed wrong).
    _, out, (a,) = outcome_of([(ac(calling=b"MOD1", called=b"PACS"), True), A.CLOSED], from_syn=False)
    assert a.calling_ae == b"MOD1" and a.called_ae == b"PACS" and a.requestor_is_client is False
    assert a.outcome == A.ENDED_WITHOUT_RELEASE and a.setup_seconds is None


def test_rq_from_server_side_makes_it_the_requestor():
    _, out, (a,) = outcome_of([(rq(), False), (P.AssociateReject(1.5, 1, 1, 3), True)])
    assert a.requestor_is_client is False and a.outcome == A.REJECTED


def test_second_association_on_one_connection_is_counted_and_followed():
    _, out, ended = outcome_of([(rq(), True), (ac(), False), (P.ReleaseRequest(2.0), True),
                                (P.ReleaseReply(2.1), False), (rq(ts=3.0), True),
                                (P.AssociateReject(3.1, 2, 3, 2), False), A.CLOSED])
    assert [a.outcome for a in ended] == [A.RELEASED, A.REJECTED]
    assert [n.kind for n in out if isinstance(n, A.ProtocolViolation)] == ["association-in-sequence"]


def test_answer_after_end_is_a_violation():
    m, out, _ = outcome_of([(rq(), True), (P.AssociateReject(1.5, 1, 1, 3), False), (ac(), False)])
    assert m.state == A.DONE
    assert out[-1] == A.ProtocolViolation("unexpected-pdu", A.AC, A.DONE)


def test_ended_associations_are_freed_by_reference_counting():
    # No reference cycle per association (the DIMSE tracker lets go of it when it ends): a reject
    # storm must not leave tens of thousands of cycles for the cyclic collector to find and free.
    import gc
    from pathlib import Path

    from probe.offline import analyze_files

    captures = Path(__file__).parent / "fixtures" / "captures"
    seen = []
    gc.collect()
    gc.disable()
    try:
        pipe = analyze_files([str(captures / "reject_calling_pynetdicom.pcap"), str(captures / "dimse_move.pcap"),
                              str(captures / "abort.pcap")], [104, 11112],
                             on_association=lambda a: seen.append(a.outcome))
        assert len(seen) >= 8 and pipe.flows.active == 0
        del pipe
        left = [o for o in gc.get_objects() if isinstance(o, A.Association)]
    finally:
        gc.enable()
    assert left == []
