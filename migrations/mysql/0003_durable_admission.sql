-- Every 202 is honoured (durable admission, and a queue that notices it went back in time).

-- The embedded admission queue's durable record: one row per request it admitted, written
-- (one transaction per group commit) before the request is answered 202, deleted by a later
-- group commit once its chunk has committed. A start rebuilds the queue from these rows.
CREATE TABLE admissions (
    campaign_id VARCHAR(128) NOT NULL,
    position    BIGINT       NOT NULL,
    user_id     VARCHAR(128) NOT NULL,
    request_id  VARCHAR(36)  NOT NULL,
    admitted_at BIGINT       NOT NULL,
    PRIMARY KEY (campaign_id, position)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- The highest position any coupon of the campaign was issued at, written by the chunk
-- transaction. An admission queue whose own counter is below it has gone back in time.
ALTER TABLE campaigns ADD COLUMN last_position BIGINT NOT NULL DEFAULT 0;
UPDATE campaigns SET last_position = COALESCE(
    (SELECT MAX(position) FROM coupons WHERE coupons.campaign_id = campaigns.id), 0);
