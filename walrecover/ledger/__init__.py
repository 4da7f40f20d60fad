"""Prove the rebuilt table (or the audit) against the business's own totals."""
