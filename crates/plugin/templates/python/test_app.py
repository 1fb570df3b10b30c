from app import counter_key, describe


def test_describes_an_issuance():
    assert describe("u1", "Spring", 3) == "u1 got coupon #3 of Spring"
    assert counter_key(None) == "issued.unknown"
    assert counter_key("20s") == "issued.20s"
