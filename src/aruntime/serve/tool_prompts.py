"""A chat request's conversation rendered with its tools, through the model's chat template.

In serve/, not engine/: it maps OpenAI's request shapes (tools, tool_choice, assistant
`tool_calls`, `tool` messages) onto a template; the engine's tokenizer stays a plain renderer.

A template that handles tools itself (it mentions `tools`, as Qwen2.5's and Llama 3.1's do) gets
`tools=` and the messages with each call's arguments as a dict, as Hugging Face templates expect.
A template that does not (SmolLM2-135M-Instruct's renders role and content only) gets the
conversation rewritten in the parser's format: the tools offered in a system-prompt block,
assistant calls as the text the model would write, tool answers as a user turn
(`<tool_response>` blocks for Hermes), consecutive answers in one turn.
"""

from __future__ import annotations

import json
import re
from typing import Any

from aruntime.engine.tokenizer import Tokenizer
from aruntime.serve.tool_parsers import ToolParser
from aruntime.serve.tool_specs import ToolPlan

_MENTIONS_TOOLS = re.compile(r"\btools\b")


def template_handles_tools(template: str | None) -> bool:
    return bool(template and _MENTIONS_TOOLS.search(template))


def render_chat(tokenizer: Tokenizer, messages: list[dict[str, Any]], plan: ToolPlan,
                parser: ToolParser) -> str:
    """The prompt text; `tool_choice: "none"` offers no tools (the history still renders).
    Raises the tokenizer's ChatTemplateError when the template fails."""
    if template_handles_tools(tokenizer.chat_template):
        extra: dict[str, Any] = {}
        if plan.offered:
            extra["tools"] = [t.as_openai() for t in plan.tools]
        return tokenizer.apply_chat_template(
            [_dict_arguments(m) for m in messages], add_generation_prompt=True, **extra)
    return tokenizer.apply_chat_template(own_format(messages, plan, parser),
                                         add_generation_prompt=True)


def _dict_arguments(message: dict[str, Any]) -> dict[str, Any]:
    if "tool_calls" not in message:
        return message
    calls = [{**c, "function": {"name": c["function"]["name"],
                                "arguments": json.loads(c["function"]["arguments"])}}
             for c in message["tool_calls"]]
    return {**message, "tool_calls": calls}


def own_format(messages: list[dict[str, Any]], plan: ToolPlan,
               parser: ToolParser) -> list[dict[str, Any]]:
    """Role-and-content messages that spell the tools, calls and answers in `parser`'s format;
    a conversation without any of them comes back as it was."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "tool":
            answer = parser.result_text(m["content"])
            if out and out[-1].get("_answers"):  # one user turn carries consecutive answers
                out[-1]["content"] += "\n" + answer
            else:
                out.append({"role": "user", "content": answer, "_answers": True})
        elif m.get("tool_calls"):
            calls = parser.calls_separator.join(
                parser.call_text(c["function"]["name"], json.loads(c["function"]["arguments"]))
                for c in m["tool_calls"])
            text = f"{m['content']}\n{calls}" if m["content"] else calls
            out.append({"role": "assistant", "content": text})
        else:
            out.append(m)
    out = [{k: v for k, v in m.items() if k != "_answers"} for m in out]
    if not plan.offered:
        return out
    block = parser.instruction(plan.tools)
    if out and out[0]["role"] == "system":
        first = out[0]["content"]
        return [{**out[0], "content": f"{first}\n\n{block}" if first else block}, *out[1:]]
    return [{"role": "system", "content": block}, *out]
