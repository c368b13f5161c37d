"""A minimal Twilio ⇄ OpenAI Realtime bridge in the style of the widely used public sample.

Only for side-by-side benchmarks (bench/README.md, "Side by side"). It is written the way that
sample is: FastAPI + uvicorn, one `/media-stream` WebSocket route, a `websockets` client per
call, `json.loads`/`json.dumps` per message, two coroutines joined with `asyncio.gather`.
Its known behaviour is kept on purpose and not fixed: nothing closes the Realtime socket when
Twilio hangs up (Starlette's `iter_text` ends quietly on disconnect, so the `except` branch that
would close it never runs); the socket closes only when the Realtime side sends something that
can no longer be forwarded, or closes itself.

Runs in its own virtualenv (bench/compare/.venv: fastapi, uvicorn, websockets):

    taskset -c 0 bench/compare/.venv/bin/python bench/compare/sample_bridge.py \
        --port 9000 --realtime-url ws://127.0.0.1:9100/v1/realtime
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
from typing import Any

import uvicorn
import websockets
from fastapi import FastAPI, WebSocket
from fastapi.websockets import WebSocketDisconnect

log = logging.getLogger("sample_bridge")

INSTRUCTIONS = "You are a friendly assistant answering the phone for a pizza shop."
VOICE = "alloy"
LOG_EVENT_TYPES = {
    "error", "response.done", "input_audio_buffer.committed", "input_audio_buffer.speech_stopped",
    "input_audio_buffer.speech_started", "session.created", "session.updated",
}


def realtime_url(base: str, model: str) -> str:
    """The Realtime URL with `?model=` appended unless the URL already carries a query."""
    return base if "?" in base else f"{base}?model={model}"


def create_app(url: str, api_key: str, speak_first: bool) -> FastAPI:
    """The FastAPI app with the `/media-stream` route, bridging to the Realtime service at `url`."""
    app = FastAPI()

    @app.get("/")
    async def index() -> dict[str, str]:
        return {"message": "sample bridge is running"}

    @app.websocket("/media-stream")
    async def media_stream(websocket: WebSocket) -> None:
        await websocket.accept()
        async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {api_key}"}) as openai_ws:
            await send_session_update(openai_ws, speak_first)

            stream_sid: str | None = None
            latest_media_timestamp = 0
            last_assistant_item: str | None = None
            mark_queue: list[str] = []
            response_start_timestamp_twilio: int | None = None

            async def receive_from_twilio() -> None:
                nonlocal stream_sid, latest_media_timestamp, last_assistant_item, response_start_timestamp_twilio
                try:
                    async for message in websocket.iter_text():
                        data = json.loads(message)
                        event = data.get("event")
                        if event == "media" and openai_ws.state is websockets.State.OPEN:
                            latest_media_timestamp = int(data["media"]["timestamp"])
                            await openai_ws.send(json.dumps({
                                "type": "input_audio_buffer.append",
                                "audio": data["media"]["payload"],
                            }))
                        elif event == "start":
                            stream_sid = data["start"]["streamSid"]
                            log.info("stream started")
                            response_start_timestamp_twilio = None
                            latest_media_timestamp = 0
                            last_assistant_item = None
                        elif event == "mark":
                            if mark_queue:
                                mark_queue.pop(0)
                except WebSocketDisconnect:
                    log.info("caller disconnected")
                    await openai_ws.close()

            async def send_to_twilio() -> None:
                nonlocal stream_sid, last_assistant_item, response_start_timestamp_twilio
                try:
                    async for openai_message in openai_ws:
                        response = json.loads(openai_message)
                        kind = response.get("type")
                        if kind in LOG_EVENT_TYPES:
                            log.info("received event: %s", kind)
                        if kind == "response.output_audio.delta" and "delta" in response:
                            await websocket.send_json({
                                "event": "media",
                                "streamSid": stream_sid,
                                "media": {"payload": response["delta"]},
                            })
                            if response_start_timestamp_twilio is None:
                                response_start_timestamp_twilio = latest_media_timestamp
                            if response.get("item_id"):
                                last_assistant_item = response["item_id"]
                            await send_mark()
                        elif kind == "input_audio_buffer.speech_started":
                            await handle_speech_started()
                except Exception as exc:  # the sample's catch-all: report and end this side
                    log.warning("send_to_twilio ended: %s", type(exc).__name__)

            async def handle_speech_started() -> None:
                nonlocal last_assistant_item, response_start_timestamp_twilio
                if mark_queue and response_start_timestamp_twilio is not None:
                    elapsed = latest_media_timestamp - response_start_timestamp_twilio
                    if last_assistant_item:
                        await openai_ws.send(json.dumps({
                            "type": "conversation.item.truncate",
                            "item_id": last_assistant_item,
                            "content_index": 0,
                            "audio_end_ms": elapsed,
                        }))
                    await websocket.send_json({"event": "clear", "streamSid": stream_sid})
                    mark_queue.clear()
                    last_assistant_item = None
                    response_start_timestamp_twilio = None

            async def send_mark() -> None:
                if stream_sid:
                    await websocket.send_json({"event": "mark", "streamSid": stream_sid, "mark": {"name": "responsePart"}})
                    mark_queue.append("responsePart")

            await asyncio.gather(receive_from_twilio(), send_to_twilio())

    return app


async def send_session_update(openai_ws: Any, speak_first: bool) -> None:
    """Configure the session (GA shape, µ-law both ways, server VAD) and optionally greet first."""
    await openai_ws.send(json.dumps({
        "type": "session.update",
        "session": {
            "type": "realtime",
            "output_modalities": ["audio"],
            "instructions": INSTRUCTIONS,
            "audio": {
                "input": {"format": {"type": "audio/pcmu"}, "turn_detection": {"type": "server_vad"}},
                "output": {"format": {"type": "audio/pcmu"}, "voice": VOICE},
            },
        },
    }))
    if speak_first:
        await openai_ws.send(json.dumps({
            "type": "conversation.item.create",
            "item": {"type": "message", "role": "user",
                     "content": [{"type": "input_text", "text": "Greet the caller."}]},
        }))
        await openai_ws.send(json.dumps({"type": "response.create"}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default=os.environ.get("SAMPLE_HOST", "127.0.0.1"))
    ap.add_argument("--port", type=int, default=int(os.environ.get("PORT", "5050")))
    ap.add_argument("--realtime-url", default=os.environ.get("OPENAI_REALTIME_URL", "wss://api.openai.com/v1/realtime"))
    ap.add_argument("--model", default=os.environ.get("OPENAI_REALTIME_MODEL", "gpt-realtime"))
    ap.add_argument("--no-speak-first", action="store_true", help="wait for the caller instead of greeting")
    ap.add_argument("--log-level", default=os.environ.get("SAMPLE_LOG_LEVEL", "warning"))
    args = ap.parse_args()
    api_key = os.environ.get("OPENAI_API_KEY", "")
    if not api_key:
        raise SystemExit("OPENAI_API_KEY is not set")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(realtime_url(args.realtime_url, args.model), api_key, not args.no_speak_first)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
