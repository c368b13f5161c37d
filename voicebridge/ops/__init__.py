"""The operations side: store, outbox, metrics, logs, systemd notify, cost."""
