"""Practise a recovery on a throwaway PostgreSQL server (``walrecover rehearse``, the
notebooks).
"""
