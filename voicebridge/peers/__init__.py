"""Local stand-ins for the far ends of a call: a fake Twilio caller and a fake Realtime server."""
