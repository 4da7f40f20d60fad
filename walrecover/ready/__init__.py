"""Before the disaster: keep recovery points (protect), check them (doctor), stop a destructive
migration that no recovery point covers (guard)."""
