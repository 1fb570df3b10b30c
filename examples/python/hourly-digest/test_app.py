import pytest

from app import HOUR_MS, check_settings, digest, digest_every, hour_key


def test_counts_per_campaign_and_hour():
    assert hour_key("spring", 0) == "hour:spring:0"
    assert hour_key("spring", HOUR_MS - 1) == "hour:spring:0"
    assert hour_key("spring", HOUR_MS) == "hour:spring:1"


def test_digest_names_the_hour_in_utc():
    subject, body = digest("Flash sale", 1_764_511_200_000 + 5, 200, 1350)
    assert subject == "Flash sale: 200 coupons in the hour from 2025-11-30 14:00 UTC, 1,350 in all"
    assert "since it opened" in body
    subject, _ = digest("Flash sale", 0, 1, 1)
    assert subject == "Flash sale: 1 coupon in the hour from 1970-01-01 00:00 UTC, 1 in all"


def test_settings_are_checked():
    assert digest_every(None) == 100
    assert digest_every("25") == 25
    for bad in ["0", "-3", "ten", ""]:
        with pytest.raises(ValueError, match="digest_every"):
            digest_every(bad)
    with pytest.raises(ValueError, match="operator_email"):
        check_settings({})
    check_settings({"operator_email": "desk@shop.test", "digest_every": "5"})
