"""The plain chat template: how a list of chat messages becomes one prompt for a model that
was trained on plain text, without a chat template of its own.

    System: You are terse.
    User: Hello
    Assistant: Hi.
    User: How are you?
    Assistant:

Each message is one ``Role: content`` line (roles capitalised: System, User, Assistant;
OpenAI's "developer" role is written as System); the prompt ends with ``Assistant:`` and
the model writes the rest. A reply ends at its first ``\\nUser:`` (:data:`CHAT_STOP`),
the point where a model trained on such transcripts would start the user's next turn.
"""

from __future__ import annotations

from statewise.errors import ArgumentError

ROLES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\nUser:"


def message_text(content: object, where: str) -> str:
    """The text of one message's ``content``: a string, or a list of ``{"type": "text",
    "text": ...}`` parts joined together (the shape OpenAI's clients send)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        pieces = []
        for i, part in enumerate(content):
            if not (
                isinstance(part, dict)
                and part.get("type") == "text"
                and isinstance(part.get("text"), str)
            ):
                raise ArgumentError(
                    f"{where}.content[{i}]: only text parts are supported "
                    '({"type": "text", "text": "..."})'
                )
            pieces.append(part["text"])
        return "".join(pieces)
    raise ArgumentError(f"{where}.content must be a string or a list of text parts")


def render_chat(messages: list[dict[str, object]]) -> str:
    """The prompt for ``messages`` (OpenAI's ``[{"role": ..., "content": ...}]``) under the
    plain template of the module doc."""
    if not messages:
        raise ArgumentError("messages is empty: give at least one message")
    lines = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        role = message.get("role")
        if role not in ROLES:
            raise ArgumentError(
                f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}"
            )
        lines.append(f"{ROLES[role]}: {message_text(message.get('content'), where)}\n")
    return "".join(lines) + "Assistant:"
