"""The child process of ``opengrid.node.chat_template``: renders untrusted Jinja chat templates.

Run as a script (``python _template_child.py``), never imported by the node: it imports only the standard
library and jinja2, so it starts fast and a template cannot reach the node's memory or keys. It caps its
own address space (``RLIMIT_AS``), so a template that builds a huge string fails here with MemoryError
instead of swapping the machine; the parent kills it on a time limit, the only hard time limit Python has.

Protocol on stdin/stdout, one request at a time: a 4-byte big-endian length, then a JSON object.
Request ``{"template", "messages", "bos_token", "eos_token", "max_output"}``; reply ``{"prompt": str}`` or
``{"error": "refused" | "too_large" | "broken" | "unavailable", "message": str}``. EOF on stdin ends the
process.
"""

from __future__ import annotations

import json
import resource
import sys
from datetime import datetime
from typing import Any, BinaryIO

MEMORY_LIMIT = 768 * 1024 * 1024
"""Bytes of address space this process may map (the interpreter and jinja2 need about 60 MiB)."""
MAX_REQUEST = 16 * 1024 * 1024
"""Largest request accepted on stdin (a template of 64 KiB and messages of a few MiB)."""


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _raise_exception(message: str) -> None:
    raise _Refused(message)


class _Refused(Exception):
    """The template itself raised (``raise_exception``): it does not support these messages."""


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _environment() -> Any:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        """HuggingFace's ``{% generation %}`` tag renders its body unchanged."""

        tags = {"generation"}  # noqa: RUF012 (jinja2 declares it on Extension without ClassVar)

        def parse(self, parser: Any) -> Any:
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    # As llama.cpp's chat completion formats (llama_cpp.llama_chat_format.Jinja2ChatFormatter), so the
    # prompt is the one a worker's own chat endpoint would build.
    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    environment.filters["tojson"] = _tojson
    return environment


def _render(request: dict[str, Any]) -> dict[str, str]:
    limit = int(request["max_output"])
    try:
        template = _environment().from_string(request["template"])
        parts: list[str] = []
        size = 0
        for chunk in template.generate(
            messages=request["messages"],
            eos_token=request["eos_token"],
            bos_token=request["bos_token"],
            raise_exception=_raise_exception,
            add_generation_prompt=True,
            functions=None,
            function_call=None,
            tools=None,
            tool_choice=None,
            strftime_now=_strftime_now,
        ):
            size += len(chunk)
            if size > limit:
                return {"error": "too_large", "message": f"the rendered prompt exceeds {limit} characters"}
            parts.append(chunk)
        return {"prompt": "".join(parts)}
    except _Refused as exc:
        return {"error": "refused", "message": str(exc)}
    except ImportError as exc:  # this installation's fault, not the template's
        return {"error": "unavailable", "message": f"jinja2 cannot be imported: {exc}"}
    except MemoryError:
        return {"error": "too_large", "message": "rendering ran out of the renderer's memory"}
    except RecursionError:
        return {"error": "broken", "message": "the template recurses too deeply"}
    except Exception as exc:  # a template error, a sandbox violation, a bad filter: all the template's
        return {"error": "broken", "message": f"{type(exc).__name__}: {exc}"}


def _read_exact(stream: BinaryIO, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = stream.read(size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def main() -> None:
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    except (ValueError, OSError):
        pass  # a platform without it: the parent's time limit still holds
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = _read_exact(stdin, 4)
        if header is None:
            return
        size = int.from_bytes(header, "big")
        if size > MAX_REQUEST:
            return
        body = _read_exact(stdin, size)
        if body is None:
            return
        try:
            reply = _render(json.loads(body))
        except MemoryError:
            reply = {"error": "too_large", "message": "rendering ran out of the renderer's memory"}
        except (ValueError, KeyError, TypeError) as exc:
            reply = {"error": "broken", "message": f"bad request to the renderer: {exc}"}
        data = json.dumps(reply).encode()
        stdout.write(len(data).to_bytes(4, "big") + data)
        stdout.flush()


if __name__ == "__main__":
    main()
