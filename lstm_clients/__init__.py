"""Command-line clients of the service: ``lstm-replay`` (a CSV of readings into a stream) and
``lstm-tail`` (follow streams' predictions live). They speak the public HTTP API only."""
