"""The edges: wire protocols, sockets, the web front, security, audio codecs, the Twilio REST client."""
