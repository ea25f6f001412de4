"""Rendering untrusted chat templates off the event loop, with hard time, size and memory limits.

A chat request to the API is formatted with the Jinja chat template a *worker* announced (``ModelOffer
.chat_template``): untrusted code. Rendered in the node's own thread, a template with nested loops froze
the coordinator's event loop for 32 s (issue 15, item 7); a thread cannot be killed, so the only hard time
limit in Python is another process. ``TemplateRenderer`` keeps a small pool of long-lived child processes
(``_template_child.py``: jinja2's ``ImmutableSandboxedEnvironment``, an address-space cap); a render that
runs past ``timeout_s`` gets its child killed (a fresh one is started for the next render). Limits:

- the template: at most ``MAX_TEMPLATE_CHARS`` (the wire's limit on ``ModelOffer.chat_template``);
- the output: at most ``max_output`` characters (the wire's prompt limit: a longer prompt is refused anyway);
- time: ``timeout_s`` per render (default 2 s; real templates render in well under a millisecond);
- memory: the child's ``RLIMIT_AS`` (768 MiB).

A template that breaks a limit or does not compile is *bad*: ``render`` raises ``TemplateError`` with
``fault="template"`` and remembers its hash, so the next request for it fails at once without a render
(``is_bad``) and the API can prefer another worker's template. A template that refuses the messages
(``raise_exception``) raises ``fault="client"``: the request's fault, the template is fine.

Why a pool and not a process per render (measured on the dev box, 2 cores shared with other jobs, 100
renders of a small template): a child's first render, start-up and jinja2's import included, took 0.33 s;
a render on a warm child 4.3 ms, round trip included. A fresh process per request would add a third of a
second to every chat request; the pool pays it once per slot and after each kill.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, Final

import trio

from opengrid.errors import TemplateError
from opengrid.wire.messages import MAX_PROMPT_CHARS

log = logging.getLogger("opengrid.api.templates")

MAX_TEMPLATE_CHARS: Final = 65536
"""Longest chat template rendered (the wire's limit on ``ModelOffer.chat_template``)."""
RENDER_TIMEOUT_S: Final = 2.0
"""Wall-clock limit on one render, child round trip included."""
POOL_SIZE: Final = 2
"""Child processes kept: renders beyond this many at once wait for a free child."""
MAX_BAD_REMEMBERED: Final = 1024
"""Bad template hashes remembered (oldest forgotten first)."""
_CHILD: Final = pathlib.Path(__file__).with_name("_template_child.py")
_MAX_REPLY: Final = 8 * MAX_PROMPT_CHARS + 4096
"""Largest reply read from a child (JSON may escape each character to 6 bytes)."""


def template_hash(template: str) -> str:
    """The name a template is remembered by (sha256 of its UTF-8, hex)."""
    return hashlib.sha256(template.encode("utf-8", "surrogatepass")).hexdigest()


class _Child:
    """One renderer process and its pipes."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self.stdout = process.stdout
        self._buffer = b""

    async def ask(self, request: bytes) -> dict[str, Any]:
        await self.stdin.send_all(len(request).to_bytes(4, "big") + request)
        size = int.from_bytes(await self._read(4), "big")
        if size > _MAX_REPLY:
            raise OSError(f"renderer reply of {size} bytes")
        reply = json.loads(await self._read(size))
        if not isinstance(reply, dict):
            raise OSError("renderer reply is not an object")
        return reply

    async def _read(self, size: int) -> bytes:
        while len(self._buffer) < size:
            chunk = await self.stdout.receive_some(max(65536, size - len(self._buffer)))
            if not chunk:
                raise OSError("the renderer process exited")
            self._buffer += chunk
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def kill(self) -> None:
        try:
            self.process.kill()
        except OSError:
            pass  # already gone


class TemplateRenderer:
    """Renders chat templates in a pool of killable child processes (see the module docstring).

    Use from trio; ``aclose`` kills the children (they also exit when the node does: their stdin closes).
    """

    def __init__(
        self,
        *,
        timeout_s: float = RENDER_TIMEOUT_S,
        pool_size: int = POOL_SIZE,
        max_output: int = MAX_PROMPT_CHARS,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_output = max_output
        self._slots = trio.Semaphore(pool_size)
        self._idle: list[_Child] = []
        self._bad: dict[str, str] = {}
        """Template hash -> why it is bad, oldest first."""
        self.renders = 0
        self.kills = 0

    def is_bad(self, template: str) -> str:
        """Why ``template`` is known bad ("" if it is not)."""
        return self._bad.get(template_hash(template), "")

    def _mark_bad(self, template: str, why: str) -> TemplateError:
        self._bad[template_hash(template)] = why
        while len(self._bad) > MAX_BAD_REMEMBERED:
            del self._bad[next(iter(self._bad))]
        log.warning(
            "chat template %s is bad and will not be used again: %s", template_hash(template)[:12], why
        )
        return TemplateError(why, fault="template")

    async def render(
        self, template: str, messages: Sequence[dict[str, str]], *, bos_token: str, eos_token: str
    ) -> str:
        """The prompt ``template`` makes of ``messages``; raises TemplateError (see the module docstring)."""
        known = self.is_bad(template)
        if known:
            raise TemplateError(f"this chat template was found bad before: {known}", fault="template")
        if len(template) > MAX_TEMPLATE_CHARS:
            raise self._mark_bad(
                template, f"the chat template has {len(template)} characters, over {MAX_TEMPLATE_CHARS}"
            )
        request = json.dumps(
            {
                "template": template,
                "messages": list(messages),
                "bos_token": bos_token,
                "eos_token": eos_token,
                "max_output": self.max_output,
            }
        ).encode("utf-8", "surrogatepass")
        async with self._slots:
            child = self._idle.pop() if self._idle else await self._start()
            reply: dict[str, Any] | None = None
            healthy = False
            try:
                with trio.move_on_after(self.timeout_s):
                    reply = await child.ask(request)
                healthy = reply is not None
            except (OSError, ValueError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise self._mark_bad(template, f"the chat template crashed its renderer: {exc}") from exc
            finally:
                if healthy:
                    self._idle.append(child)
                else:  # timed out, crashed or cancelled mid-render: its state is unknown, never reuse it
                    child.kill()
                    self.kills += 1
                    await self._reap(child)
            if reply is None:
                raise self._mark_bad(template, f"the chat template ran longer than {self.timeout_s:g} s")
        self.renders += 1
        prompt = reply.get("prompt")
        if isinstance(prompt, str):
            return prompt
        kind, message = str(reply.get("error", "broken")), str(reply.get("message", ""))
        if kind == "unavailable":  # the node cannot render at all: nobody's template is to blame
            raise TemplateError(f"this node cannot render chat templates: {message}", fault="node")
        if kind == "refused":
            raise TemplateError(
                f"the model's chat template refused these messages: {message}", fault="client"
            )
        raise self._mark_bad(template, f"the chat template failed: {message}")

    async def _start(self) -> _Child:
        process = await trio.lowlevel.open_process(
            # -P: the script's folder (opengrid/node) is not put on sys.path; site-packages, the user's
            # included, stay as the node has them, so jinja2 imports wherever it was installed.
            [sys.executable, "-P", str(_CHILD)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return _Child(process)

    async def _reap(self, child: _Child) -> None:
        with trio.move_on_after(5), trio.CancelScope(shield=True):
            await child.process.wait()

    async def aclose(self) -> None:
        """Kill every idle child (a render in flight kills its own on cancellation)."""
        idle, self._idle = self._idle, []
        for child in idle:
            child.kill()
        for child in idle:
            await self._reap(child)
