"""Read the changes (a slot's copy or pg_recvlogical captures) and decode them into the canonical
events; ``walrecover decode`` exports them.
"""
