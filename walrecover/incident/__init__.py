"""During the incident: find what happened to a table in the retained WAL (``walrecover inspect``)
and turn a destructive event into a stop point (``recover --stop-before drop``)."""
