from chatapp.auth import hash_password, random_password, verify_password


def test_hash_roundtrip_and_salting() -> None:
    h1, h2 = hash_password("s3cret"), hash_password("s3cret")
    assert h1 != h2 and h1.startswith("scrypt$")
    assert verify_password("s3cret", h1) and verify_password("s3cret", h2)
    assert not verify_password("S3cret", h1)
    assert not verify_password("s3cret", "garbage") and not verify_password("x", "")


def test_random_password_is_strong_enough() -> None:
    pw = {random_password() for _ in range(50)}
    assert len(pw) == 50 and all(len(p) >= 16 for p in pw)
