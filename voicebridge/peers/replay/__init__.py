"""`voicebridge replay`: play the peers' side of a recorded call against the daemon, and compare.

A recording (`voicebridge.edges.recording`) holds every message of a call on both of its sockets.
The replay runs the real daemon in-process on 127.0.0.1, exactly as `voicebridge demo` does
(`Daemon` + `serve_daemon`, a temporary SQLite file, unsigned Twilio requests, a public https
origin mapped to the loopback port), with the call settings of the recording's meta line, no
webhook delivery and a local key. Its Realtime URL points at a replay Realtime server, which
answers each connection's handshake itself and then plays the recorded server events of that
connection; a replay caller plays Twilio: the voice webhook, the media stream with the recorded
frames (and a fresh stream token; `stop` is followed by the caller's close), and the
`<Connect action>` request as soon as the stream is over.

Recorded messages are sent at their recorded times since the stream's `start`, in the order
the bridge received them, and never before the bridge has sent, on the same socket, the control
messages it had sent before them in the recording (a reply waits for its request, a mark echo
for its mark). Such a wait is bounded by `tolerance_s`: a bridge that stopped sending does not
stall the replay, it shows up as differences. A recorded close by the peer closes the socket
then (code 1006: abruptly, a TCP reset).

What the bridge sent on each socket (Twilio, and each Realtime connection) is then compared with
the recording, message by message and in order, after dropping what legitimately varies
(`event_id`); on a Realtime socket, forwarded caller audio and control events are two streams
compared each in its own order (their interleaving is a matter of timing). Audio must match
byte for byte. A difference names the socket, the message's index among the bridge's messages
on that socket, and expected vs got (the type and the differing field, never a whole audio
payload). Times are compared too: a message sent more than `tolerance_s` from its recorded time
is a timing difference, and so is a truncation point (`audio_end_ms`, how much the caller had
heard: a measure of time) more than `tolerance_s` off. Not a difference: which 20 ms frame of
caller audio is the first or last one forwarded on a Realtime connection, for a frame (or a run
of identical frames) within `tolerance_s` of the connection's first or last recorded line;
those are counted as `boundary_frames`.

Everything is bounded: a replay ends at the recording's last time plus a grace period, whatever
the bridge does, and stops everything it started. Several recordings replay at once, their calls
starting together once all are set up, and are compared after every call is over.
"""

from voicebridge.peers.replay.compare import Difference, ReplayReport, align, compare, content_difference, describe
from voicebridge.peers.replay.plan import (
    DEFAULT_TOLERANCE_S,
    Recording,
    RecordingError,
    load_recording,
    plan_replay,
)
from voicebridge.peers.replay.run import render_json, replay_all, replay_config, replay_recording, run_replay_command
from voicebridge.peers.replay.server import ReplayRealtimeServer

__all__ = [
    "DEFAULT_TOLERANCE_S", "Difference", "Recording", "RecordingError", "ReplayRealtimeServer", "ReplayReport",
    "align", "compare", "content_difference", "describe", "load_recording", "plan_replay", "render_json",
    "replay_all", "replay_config", "replay_recording", "run_replay_command",
]
