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


def test_replies_events_and_connect_response_go_out_as_one_buffer() -> None:
    conn = wire.ServerConnection()
    conn.receive_data(connect_bytes())
    assert isinstance(conn.events()[0], wire.Connect)
    conn.send_connect_response(jute.ConnectResponse(0, 10000, 7, bytes(16), False))
    stat = jute.Stat(1, 2, 3, 4, 5, 6, 7, 0, 1, 0, 9)
    conn.send_event(3, "/a")  # NodeDataChanged
    conn.send_reply(5, 0x100000002, 0, jute.GetDataResponse(b"x", stat))
    conn.send_reply(6, 0x100000002, Err.NO_NODE, jute.GetDataResponse(b"x", stat))
    assert conn.take_frame_count() == 3  # replies and events; the connect response is no packet
    data = conn.data_to_send()
    assert conn.outgoing == 0 and conn.data_to_send() == b""
    frames = jute.FrameDecoder()
    frames.feed(bytes(data))
    payloads = frames.frames()
    assert jute.decode_connect_response(payloads[0]).session_id == 7
    header, event = jute.decode_reply(payloads[1], None)
    assert header.xid == -1 and (event.type, event.path) == (3, "/a")
    header, body = jute.decode_reply(payloads[2], OpCode.GET_DATA)
    assert (header.xid, header.zxid, header.err) == (5, 0x100000002, 0)
    assert body == jute.GetDataResponse(b"x", stat)
    header, body = jute.decode_reply(payloads[3], OpCode.GET_DATA)
    assert header.err == Err.NO_NODE and body is None and len(payloads[3]) == 16


def test_every_request_of_a_turn_in_one_call() -> None:
    conn = wire.ServerConnection()
    requests = b"".join(jute.encode_request(i, OpCode.EXISTS, jute.ExistsRequest(f"/n{i}", False))
                        for i in range(1, 101))
    conn.receive_data(connect_bytes() + requests + requests[:7])  # and a partial frame
    evs = conn.events()
    assert len(evs) == 101 and [e.xid for e in evs[1:]] == list(range(1, 101))
    conn.receive_data(requests[7:len(requests) // 100])  # the rest of the first request
    assert [e.xid for e in conn.events()] == [1]


def test_a_bad_length_behind_good_frames_comes_after_them() -> None:
    conn = wire.ServerConnection()
    good = jute.encode_request(1, OpCode.EXISTS, jute.ExistsRequest("/", False))
    conn.receive_data(connect_bytes() + good + (1 << 30).to_bytes(4, "big"))
    evs = conn.events()
    assert [type(e) for e in evs] == [wire.Connect, wire.Request, wire.ProtocolError]
    assert conn.state is wire.State.CLOSED
