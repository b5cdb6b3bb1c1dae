"""Exceptions for ZooKeeper error codes, one class per code a caller is likely to handle.

`error_for(code, path)` maps a wire error code to an instance; codes without a dedicated class
become a plain `ZkError` that still carries the code, so nothing is lost.
"""
from __future__ import annotations

from typing import Any

from zkfs.constants import Err

__all__ = [
    "ZkError", "SystemZkError", "RuntimeInconsistencyError", "DataInconsistencyError",
    "ConnectionLossError", "ClientClosedError", "MarshallingError", "UnimplementedError",
    "OperationTimeoutError", "BadArgumentsError", "NoNodeError", "NoAuthError", "BadVersionError",
    "NoChildrenForEphemeralsError", "NodeExistsError", "NotEmptyError", "SessionExpiredError",
    "InvalidACLError", "AuthFailedError", "SessionMovedError", "NotReadOnlyError",
    "NoWatcherError", "RequestTimeoutError", "QuotaExceededError", "ThrottledError",
    "error_for",
]


class ZkError(Exception):
    """A ZooKeeper error: `.code` is the wire code (Err), `.path` the path involved, if known.

    A failed multi sets `.results` (see ZkClient.multi) on the exception it raises.
    """

    #: Code of the subclass; instances may carry another one (plain ZkError for unmapped codes).
    default_code: Err = Err.SYSTEM_ERROR

    def __init__(self, message: str | None = None, *, code: int | None = None,
                 path: str | None = None) -> None:
        raw = self.default_code if code is None else code
        try:
            self.code: Err | int = Err(raw)
        except ValueError:
            # A code newer than our table must still surface, not turn into a ValueError.
            self.code = raw
        self.path = path
        self.results: list[Any] | None = None
        name = self.code.name if isinstance(self.code, Err) else str(self.code)
        if message is None:
            message = name if path is None else f"{name}: {path}"
        super().__init__(message)


class SystemZkError(ZkError):
    default_code = Err.SYSTEM_ERROR


class RuntimeInconsistencyError(ZkError):
    default_code = Err.RUNTIME_INCONSISTENCY


class DataInconsistencyError(ZkError):
    default_code = Err.DATA_INCONSISTENCY


class ConnectionLossError(ZkError):
    default_code = Err.CONNECTION_LOSS


class MarshallingError(ZkError):
    default_code = Err.MARSHALLING_ERROR


class UnimplementedError(ZkError):
    default_code = Err.UNIMPLEMENTED


class OperationTimeoutError(ZkError):
    default_code = Err.OPERATION_TIMEOUT


class BadArgumentsError(ZkError):
    default_code = Err.BAD_ARGUMENTS


class NoNodeError(ZkError):
    default_code = Err.NO_NODE


class NoAuthError(ZkError):
    default_code = Err.NO_AUTH


class BadVersionError(ZkError):
    default_code = Err.BAD_VERSION


class NoChildrenForEphemeralsError(ZkError):
    default_code = Err.NO_CHILDREN_FOR_EPHEMERALS


class NodeExistsError(ZkError):
    default_code = Err.NODE_EXISTS


class NotEmptyError(ZkError):
    default_code = Err.NOT_EMPTY


class SessionExpiredError(ZkError):
    default_code = Err.SESSION_EXPIRED


class InvalidACLError(ZkError):
    default_code = Err.INVALID_ACL


class AuthFailedError(ZkError):
    default_code = Err.AUTH_FAILED


class SessionMovedError(ZkError):
    default_code = Err.SESSION_MOVED


class NotReadOnlyError(ZkError):
    default_code = Err.NOT_READ_ONLY


class NoWatcherError(ZkError):
    default_code = Err.NO_WATCHER


class RequestTimeoutError(ZkError):
    default_code = Err.REQUEST_TIMEOUT


class QuotaExceededError(ZkError):
    default_code = Err.QUOTA_EXCEEDED


class ThrottledError(ZkError):
    default_code = Err.THROTTLED


class ClientClosedError(ConnectionLossError):
    """The client was closed; raised by calls made after close() (code CONNECTION_LOSS)."""


_BY_CODE: dict[int, type[ZkError]] = {
    int(cls.default_code): cls for cls in (
        SystemZkError, RuntimeInconsistencyError, DataInconsistencyError, ConnectionLossError,
        MarshallingError, UnimplementedError, OperationTimeoutError, BadArgumentsError,
        NoNodeError, NoAuthError, BadVersionError, NoChildrenForEphemeralsError, NodeExistsError,
        NotEmptyError, SessionExpiredError, InvalidACLError, AuthFailedError, SessionMovedError,
        NotReadOnlyError, NoWatcherError, RequestTimeoutError, QuotaExceededError, ThrottledError,
    )
}


def error_for(code: int, path: str | None = None, message: str | None = None) -> ZkError:
    """The exception instance for wire error `code` (a plain ZkError for unmapped codes)."""
    cls = _BY_CODE.get(int(code), ZkError)
    return cls(message, code=int(code), path=path)
