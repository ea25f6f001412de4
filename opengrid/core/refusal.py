"""Why a core decision says no: a ``Refusal`` value (a wire error code and a message), returned by every
core decision that refuses instead of a bare string.

The core decides; the driver answers. A decision returns its reply or a ``Refusal``, and the driver turns
a refusal into the wire's ``ErrorReply`` with ``Refusal.reply`` — the one place a refusal becomes a
message, so the code a client sees is the one the decision chose (spec/job-protocol.md §9: error codes).
"""

from __future__ import annotations

import msgspec

from opengrid.wire.messages import ErrorCode, ErrorReply


class Refusal(msgspec.Struct, frozen=True):
    """A decision's "no": ``code`` is the wire's error code (``ErrorCode``), ``message`` says what happened,
    with the values involved, and what to do next."""

    code: ErrorCode
    message: str

    def reply(self, job_id: bytes = b"") -> ErrorReply:
        """The refusal as the wire's ``ErrorReply`` (about ``job_id``, when it concerns a job)."""
        return ErrorReply(self.code, self.message, job_id)
