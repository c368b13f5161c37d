"""Validate Realtime events against the official `openai` models, strictly.

The models accept unknown keys (`extra="allow"`) and coerce lax values ("500" -> 500), so a
typo such as `silence_duraton_ms` validates. Here a frame only passes if it validates, no model
anywhere inside it holds an extra key, and dumping the model gives back exactly the frame.

    model = validate_client(frame)   # every frame the bridge sends
    model = validate_server(frame)   # every frame a fake server sends
    assert_strict(model)             # the walk alone, on any pydantic model

Use `strict=False` only for frames recorded from the real service, which adds keys of its own.
"""

from __future__ import annotations

import json
from typing import Any

from openai.types.realtime import RealtimeClientEvent, RealtimeServerEvent
from pydantic import BaseModel, TypeAdapter

__all__ = ["CLIENT", "SERVER", "assert_strict", "extra_keys", "validate_client", "validate_server"]

CLIENT: TypeAdapter[Any] = TypeAdapter(RealtimeClientEvent)
SERVER: TypeAdapter[Any] = TypeAdapter(RealtimeServerEvent)


def extra_keys(value: Any, path: str = "$") -> list[str]:
    """Every key, as a path like `$.session.audio.input.turn_detection.x`, that no model declares."""
    found: list[str] = []
    if isinstance(value, BaseModel):
        found += [f"{path}.{key}" for key in (value.model_extra or {})]
        for name in type(value).model_fields:
            found += extra_keys(getattr(value, name), f"{path}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found += extra_keys(item, f"{path}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            found += extra_keys(item, f"{path}.{key}")
    return found


def assert_strict(model: BaseModel) -> None:
    """Fail if any model inside `model` (nested models, lists, dicts) carries an undeclared key."""
    extras = extra_keys(model)
    assert not extras, f"keys unknown to the openai models: {', '.join(extras)}"


def validate_client(text: str | bytes, *, strict: bool = True) -> BaseModel:
    """Validate one client event frame as `RealtimeClientEvent`; strictly unless told otherwise."""
    return _validate(CLIENT, text, strict)


def validate_server(text: str | bytes, *, strict: bool = True) -> BaseModel:
    """Validate one server event frame as `RealtimeServerEvent`; strictly unless told otherwise."""
    return _validate(SERVER, text, strict)


def _validate(adapter: TypeAdapter[Any], text: str | bytes, strict: bool) -> BaseModel:
    frame = json.loads(text)
    model = adapter.validate_python(frame)  # raises pydantic.ValidationError
    assert isinstance(model, BaseModel), f"validated to {type(model).__name__}, not a model"
    if strict:
        assert_strict(model)
        dumped = model.model_dump(mode="json", exclude_unset=True, by_alias=True)
        assert dumped == frame, f"the models changed the frame:\n sent   {frame}\n parsed {dumped}"
    return model
