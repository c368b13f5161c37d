"""The engine: one call (flow, session, playout, effects) and the Job seam; imports no job."""
