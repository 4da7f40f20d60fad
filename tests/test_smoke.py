from conftest import Database


def test_cluster_is_logical(db: Database) -> None:
    assert db.scalar("SHOW wal_level") == "logical"
