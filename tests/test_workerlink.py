"""The member/worker link codec (zkfsd.workerlink), sans-IO: every message round-trips, bytes
in any chunks give the same messages, and anything malformed raises LinkError."""
from __future__ import annotations

import pickle
import struct

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zkfs import jute

from zkfsd import txns
from zkfsd.config import ServerConfig
from zkfsd.consensus import Entry
from zkfsd.workerlink import (TO_MEMBER, TO_WORKER, Closed, Drop, Entries, Failed, Forward,
                              Gone, Hello, LinkDecoder, LinkError, MemberStatus, NewTree, Open,
                              Opened, Status, Sync, Synced, Touch, decode, encode)

STATUS = MemberStatus(True, False, "follower", False, 2, 7, ((1, "leader"), (3, "follower")))


def _write(seq: int) -> txns.Txn:
    return txns.Txn(txns.SetData("/a", b"x" * seq, -1), 0x100 + seq, (("ip", "127.0.0.1"),),
                    origin=txns.Origin(1, 12345, seq))


TO_WORKER_SAMPLES = [
    Hello(ServerConfig(data_dir="/d", client_workers=3), "INFO", "/var/log/zkfsd.log", 2181, 1, STATUS,
          b"\x93tree"),
    Hello(ServerConfig(data_dir="/d"), "WARNING", None, 65535, 5, STATUS, b""),
    Entries((Entry(5, 2, b"txn"), Entry(6, 2, b""), Entry(7, 3, b"\x00" * 100))),
    Entries(()),
    Opened(9, jute.ConnectResponse(0, 30000, 0x1234, b"p" * 16, False), False, False),
    Opened(10, jute.ConnectResponse(0, 4000, 0x55, None, True), True, False),
    Opened(11, None, False, True),
    Synced(3, True),
    Synced(4, False),
    Failed((1, 2, 3)),
    Failed(()),
    Drop(9, "session moved"),
    Gone(-5),  # session ids are signed 64-bit in ZooKeeper
    Gone(0x7FFF_FFFF_FFFF_FFFF),
    Status(STATUS),
    Status(MemberStatus(False, True, "read-only", True, 0, 0, ())),
    NewTree(b"\x00" * 1000),
]
TO_MEMBER_SAMPLES = [
    Forward((_write(1), _write(2))),
    Forward(()),
    Touch((1, -2, 3), 17),
    Touch((), 0),
    Open(12, ("127.0.0.1", 40000), (("ip", "127.0.0.1"), ("digest", "u:p")),
         jute.ConnectRequest(0, 0x500000001, 30000, 0, b"\x00" * 16, False)),
    Open(13, ("::1", 1), (), jute.ConnectRequest(0, 0, 4000, 0x99, None, True)),
    Sync(14, "/a/b"),
    Closed(12),
]
SAMPLES = TO_WORKER_SAMPLES + TO_MEMBER_SAMPLES


def test_every_message_class_has_a_sample() -> None:
    assert {type(m) for m in TO_WORKER_SAMPLES} == set(TO_WORKER)
    assert {type(m) for m in TO_MEMBER_SAMPLES} == set(TO_MEMBER)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip(message: object) -> None:
    frame = encode(message)  # type: ignore[arg-type]
    (length,) = struct.unpack(">I", frame[:4])
    assert length == len(frame) - 4
    assert decode(frame[4:]) == message
    accept = TO_WORKER if type(message) in TO_WORKER else TO_MEMBER
    assert LinkDecoder(accept).feed(frame) == [message]


def test_hello_carries_the_configuration() -> None:
    cfg = ServerConfig(data_dir="/d", client_workers=4, tick_time=500)
    got = decode(encode(Hello(cfg, "DEBUG", None, 2181, 1, STATUS, b""))[4:])
    assert isinstance(got, Hello) and got.config == cfg and got.config.tick_time == 500


def test_wrong_direction_is_refused() -> None:
    with pytest.raises(LinkError, match="unexpected message tag"):
        LinkDecoder(TO_MEMBER).feed(encode(Gone(1)))
    with pytest.raises(LinkError, match="unexpected message tag"):
        LinkDecoder(TO_WORKER).feed(encode(Closed(1)))


def _stream(messages: list) -> bytes:  # type: ignore[type-arg]
    return b"".join(encode(m) for m in messages)


@pytest.mark.parametrize("accept,samples", [(TO_WORKER, TO_WORKER_SAMPLES),
                                            (TO_MEMBER, TO_MEMBER_SAMPLES)])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_chunked_feeding(accept: tuple, samples: list, chunk: int) -> None:  # type: ignore[type-arg]
    data = _stream(samples)
    decoder = LinkDecoder(accept)
    got = []
    for i in range(0, len(data), chunk):
        got += decoder.feed(data[i:i + chunk])
    decoder.end()
    assert got == samples


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=20))
def test_arbitrary_cuts(cuts: list[int]) -> None:
    data = _stream(TO_WORKER_SAMPLES)
    points = sorted({min(c, len(data)) for c in cuts} | {0, len(data)})
    decoder = LinkDecoder(TO_WORKER)
    got = []
    for a, b in zip(points, points[1:]):
        got += decoder.feed(data[a:b])
    decoder.end()
    assert got == TO_WORKER_SAMPLES


def test_empty_feed_and_partial_frame() -> None:
    decoder = LinkDecoder(TO_WORKER)
    assert decoder.feed(b"") == []
    frame = encode(Synced(1, True))
    assert decoder.feed(frame[:-1]) == []
    decoder_copy_end = LinkDecoder(TO_WORKER)
    decoder_copy_end.feed(frame[:-1])
    with pytest.raises(LinkError, match="ended inside a frame"):
        decoder_copy_end.end()
    assert decoder.feed(frame[-1:]) == [Synced(1, True)]
    decoder.end()


@pytest.mark.parametrize("cut", [1, 3, 4, 5])
def test_truncated_frame_at_end_of_stream(cut: int) -> None:
    frame = encode(Drop(1, "reason"))
    decoder = LinkDecoder(TO_WORKER)
    assert decoder.feed(frame[:cut]) == []
    with pytest.raises(LinkError):
        decoder.end()


def test_frame_over_the_limit() -> None:
    decoder = LinkDecoder(TO_WORKER, max_frame=10)
    with pytest.raises(LinkError, match="frame length"):
        decoder.feed(encode(NewTree(b"x" * 20)))
    # A negative length (the prefix is signed, as in jute's framing).
    with pytest.raises(LinkError, match="frame length"):
        LinkDecoder(TO_WORKER).feed(b"\xff\xff\xff\xff")


def test_good_frames_before_a_bad_one_come_out_first() -> None:
    decoder = LinkDecoder(TO_WORKER, max_frame=100)
    good = encode(Gone(1))
    assert decoder.feed(good + b"\x7f\x00\x00\x00") == [Gone(1)]
    with pytest.raises(LinkError):
        decoder.feed(b"")


def _payload(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _frame(obj: object) -> bytes:
    payload = _payload(obj)
    return struct.pack(">I", len(payload)) + payload


@pytest.mark.parametrize("payload", [
    b"",                       # nothing
    b"\xc1",                   # a byte msgpack never uses
    b"\x92\x01",               # an array cut short
    _payload(7),               # not an array
    _payload([]),              # no tag
    _payload(["entries", []]),  # a string tag (the old format)
    _payload([99]),            # unknown tag
    _payload([True, 1]),       # a boolean is not a tag
    _payload([2.0, []]),       # nor a float
], ids=["empty", "c1", "cut-array", "not-array", "no-tag", "string-tag", "unknown-tag",
        "bool-tag", "float-tag"])
def test_garbage(payload: bytes) -> None:
    with pytest.raises(LinkError):
        decode(payload)
    with pytest.raises(LinkError):
        LinkDecoder(TO_WORKER + TO_MEMBER).feed(struct.pack(">I", len(payload)) + payload)


def _fields(message: object) -> list:  # type: ignore[type-arg]
    return msgpack.unpackb(encode(message)[4:], raw=False)  # type: ignore[arg-type]


_WRONG = (None, "s", b"b", 1.5, True, [], [[1]], {"k": 1}, -1)


def _bad_variants(message: object) -> list[tuple[tuple[int, str], list]]:  # type: ignore[type-arg]
    """The message's wire form with one thing wrong, keyed by (field, wrong value): a field
    missing, one too many, and each field replaced by a value of another type."""
    good = _fields(message)
    out = [((-1, "missing"), good[:-1]), ((-1, "extra"), good + [0])]
    for i in range(1, len(good)):
        for wrong in _WRONG:
            if type(wrong) is type(good[i]) and wrong != -1:
                continue  # a value of the right type (but -1 where an unsigned one belongs)
            out.append(((i, repr(wrong)), good[:i] + [wrong] + good[i + 1:]))
    return out


# Replacements that are still well-formed messages, so no error is due.
_STILL_VALID = {
    (Hello, (3, "None")), (Hello, (3, "'s'")),  # a log file or none
    (Opened, (2, "None")),    # no response
    (Gone, (1, "-1")),        # session ids are signed
    (Touch, (1, "[]")), (Entries, (1, "[]")), (Failed, (1, "[]")), (Forward, (1, "[]")),
    (Open, (4, "[]")),        # no auth ids
}


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_malformed_field_is_a_link_error(message: object) -> None:
    for key, variant in _bad_variants(message):
        if (type(message), key) in _STILL_VALID:
            assert type(decode(_payload(variant))) is type(message)
            continue
        with pytest.raises(LinkError):
            decode(_payload(variant))
            pytest.fail(f"{type(message).__name__} with {key} decoded")


@pytest.mark.parametrize("nested", [
    [2, [[1, 2]]],                        # an entry of two
    [2, [[1, 2, "text"]]],                # entry data must be bytes
    [2, [[-1, 2, b""]]],                  # negative term
    [2, [[1, True, b""]]],                # a boolean index
    [2, [7]],                             # not an entry
    [3, 1, [0, 1, 2, 3], False, False],   # a response of four
    [3, 1, [0, 1, 2, "pw", False], False, False],
    [3, 1, [0, 1 << 31, 2, None, False], False, False],  # timeout past int32
    [5, [1, "2"]],
    [8, [True, False, "m", False, 1, 1, [[1]]]],         # a peer of one
    [8, [True, False, "m", False, 1, 1, [["1", "x"]]]],  # a peer id that is a string
    [8, [1, False, "m", False, 1, 1, []]],               # serving must be a boolean
    [10, [b"garbage"]],                   # not a transaction
    [10, [txns.encode(txns.Txn(txns.Sync("/"), 1))]],    # a write without its origin
    [10, ["text"]],
    [11, [1, None], 3],
    [11, [], -1],                         # a negative connection count
    [12, 1, "h", 1, [["ip"]], [0, 0, 0, 0, None, False]],  # an auth id of one
    [12, 1, "h", 1, [[1, "x"]], [0, 0, 0, 0, None, False]],
    [12, 1, "h", 1, [], [0, 0, 0, 0, None]],             # a request of five
    [12, 1, "h", 1, [], [0, 0, 0, 0, 7, False]],         # a password that is a number
    [1, b"not a pickle", "INFO", None, 2181, 1, STATUS.to_wire(), b""],
    [1, pickle.dumps({"not": "a config"}), "INFO", None, 2181, 1, STATUS.to_wire(), b""],
    [1, pickle.dumps(ServerConfig(data_dir="/d")), "INFO", None, 0, 1, STATUS.to_wire(), b""],  # port 0
    [1, pickle.dumps(ServerConfig(data_dir="/d")), "INFO", 5, 2181, 1, STATUS.to_wire(), b""],
])
def test_malformed_nested_fields(nested: list) -> None:  # type: ignore[type-arg]
    with pytest.raises(LinkError):
        decode(_payload(nested))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_fuzz_payloads_give_messages_or_link_errors(payload: bytes) -> None:
    try:
        decode(payload)
    except LinkError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=16))
def test_fuzz_streams(data: bytes, chunk: int) -> None:
    decoder = LinkDecoder(TO_WORKER + TO_MEMBER, max_frame=1 << 16)
    try:
        for i in range(0, len(data), chunk):
            decoder.feed(data[i:i + chunk])
        decoder.end()
    except LinkError:
        pass


def test_encode_refuses_a_frame_over_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    import zkfsd.workerlink as workerlink
    monkeypatch.setattr(workerlink, "MAX_LINK_FRAME", 100)
    with pytest.raises(LinkError, match="over the link's frame limit"):
        encode(NewTree(b"x" * 200))
