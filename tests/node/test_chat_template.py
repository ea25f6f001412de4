"""The chat-template renderer (opengrid/node/chat_template.py): the prompt llama.cpp's own chat formatter
would build, in a child process that a bad template cannot stall or bloat (issue 15, item 7)."""

from __future__ import annotations

import pytest
import trio
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from opengrid.errors import TemplateError
from opengrid.node.chat_template import TemplateRenderer

# A real-world shape: system prompt handling, loop controls, tojson, the generation tag, a refusal.
TEMPLATE = """{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}
{% endif %}{% if m.role == 'skip' %}{% continue %}{% endif %}<|{{ m.role }}|>{% generation %}{{ m.content }}\
{% endgeneration %}{{ m.content | tojson }}{{ eos_token }}
{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"""
MESSAGES = [
    {"role": "system", "content": "Be brief."},
    {"role": "skip", "content": "x"},
    {"role": "user", "content": 'Say "hi" — ünïcode'},
]


async def test_renders_what_llama_cpp_renders_and_classifies_every_failure() -> None:
    renderer = TemplateRenderer(timeout_s=1.0, max_output=1000)
    try:
        prompt = await renderer.render(TEMPLATE, MESSAGES, bos_token="<s>", eos_token="</s>")
        expected = Jinja2ChatFormatter(TEMPLATE, eos_token="</s>", bos_token="<s>")(messages=MESSAGES)  # type: ignore[arg-type]
        assert prompt == expected.prompt

        # The template refuses the messages: the request's fault; the template stays usable.
        with pytest.raises(TemplateError, match="no tools") as refused:
            await renderer.render(TEMPLATE, [{"role": "tool", "content": "x"}], bos_token="", eos_token="")
        assert refused.value.fault == "client" and not renderer.is_bad(TEMPLATE)

        slow = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
        big = "{% for i in range(100000) %}0123456789{% endfor %}"
        for bad, why in ((slow, "longer than 1 s"), (big, "exceeds 1000 characters"), ("{% if %}", "failed")):
            with trio.fail_after(10), pytest.raises(TemplateError, match=why) as failed:
                await renderer.render(bad, MESSAGES, bos_token="", eos_token="")
            assert failed.value.fault == "template" and renderer.is_bad(bad)
        assert renderer.kills == 1  # only the slow one needed killing
        # The pool lives on: the next render works (on a fresh child where one was killed).
        assert await renderer.render(TEMPLATE, MESSAGES, bos_token="<s>", eos_token="</s>") == prompt
    finally:
        await renderer.aclose()
