"""Check before writing, replay the events into the rebuilt table up to the stop point, and put the
rebuilt table in place (``walrecover swap``).
"""
