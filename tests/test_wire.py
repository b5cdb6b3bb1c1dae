"""The server connection state machine: bytes in, protocol events out."""
from hypothesis import given, settings, strategies as st

from zkfs import jute
from zkfs.constants import Err, OpCode
from zkfsd import wire


def connect_bytes() -> bytes:
    return jute.encode_connect_request(jute.ConnectRequest(0, 0, 10000, 0, bytes(16), False))


def events(conn: wire.ServerConnection) -> list:
    out = []
    while True:
        ev = conn.next_event()
        if ev is wire.NEED_DATA:
            return out
        out.append(ev)
        if conn.state is wire.State.CLOSED:
            return out


def test_connect_then_requests_byte_by_byte() -> None:
    conn = wire.ServerConnection()
    data = connect_bytes() + jute.encode_request(1, OpCode.GET_DATA, jute.GetDataRequest("/a", True))
    got = []
    for b in data:
        conn.receive_data(bytes([b]))
        got.extend(events(conn))
    assert isinstance(got[0], wire.Connect)
    assert got[0].request.timeout == 10000
    assert got[1] == wire.Request(1, OpCode.GET_DATA, jute.GetDataRequest("/a", True))


def test_four_letter_word_instead_of_connect() -> None:
    conn = wire.ServerConnection()
    conn.receive_data(b"ruok")
    assert events(conn) == [wire.FourLetterWord("ruok")]
    assert conn.state is wire.State.CLOSED


def test_four_letter_word_after_connect_is_just_a_bad_frame() -> None:
    conn = wire.ServerConnection()
    conn.receive_data(connect_bytes() + b"ruok")
    evs = events(conn)
    assert isinstance(evs[0], wire.Connect)
    assert isinstance(evs[1], wire.ProtocolError)  # 'ruok' as a length is far over the limit


def test_oversized_and_negative_lengths_close() -> None:
    for prefix in ((1 << 30).to_bytes(4, "big"), (-5).to_bytes(4, "big", signed=True)):
        conn = wire.ServerConnection()
        conn.receive_data(prefix)
        evs = events(conn)
        assert len(evs) == 1 and isinstance(evs[0], wire.ProtocolError)


def test_unknown_opcode_is_answered_and_connection_lives() -> None:
    conn = wire.ServerConnection()
    payload = (7).to_bytes(4, "big") + (999).to_bytes(4, "big", signed=True)
    conn.receive_data(connect_bytes() + jute.frame(payload)
                      + jute.encode_request(8, OpCode.EXISTS, jute.ExistsRequest("/", False)))
    evs = events(conn)
    assert evs[1] == wire.BadRequest(7, 999, Err.UNIMPLEMENTED, fatal=False)
    assert isinstance(evs[2], wire.Request) and evs[2].xid == 8


def test_truncated_body_is_fatal_marshalling_error() -> None:
    conn = wire.ServerConnection()
    body = jute.encode_request(3, OpCode.CREATE, jute.CreateRequest("/abc", b"x", [], 0))
    payload = body[4:-6]
    conn.receive_data(connect_bytes() + jute.frame(payload))
    evs = events(conn)
    assert evs[1] == wire.BadRequest(3, OpCode.CREATE, Err.MARSHALLING_ERROR, fatal=True)
    assert conn.state is wire.State.CLOSED


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.booleans())
def test_garbage_never_raises(data: bytes, after_connect: bool) -> None:
    conn = wire.ServerConnection()
    if after_connect:
        conn.receive_data(connect_bytes())
    conn.receive_data(data)
    for ev in events(conn):
        assert isinstance(ev, (wire.Connect, wire.Request, wire.BadRequest, wire.ProtocolError,
                               wire.FourLetterWord))
