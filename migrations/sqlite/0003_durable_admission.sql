-- Every 202 is honoured (durable admission, and a queue that notices it went back in time).

-- (The embedded admission queue's record lives in a database file of its own beside this one,
-- `{name}-admissions.db`, written only by its group commits: see `store/mod.rs`.)

-- The highest position any coupon of the campaign was issued at, written by the chunk
-- transaction. An admission queue whose own counter is below it has gone back in time.
ALTER TABLE campaigns ADD COLUMN last_position BIGINT NOT NULL DEFAULT 0;
UPDATE campaigns SET last_position = COALESCE(
    (SELECT MAX(position) FROM coupons WHERE coupons.campaign_id = campaigns.id), 0);
