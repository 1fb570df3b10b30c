-- firstcome schema, MySQL / MariaDB dialect. Times are UTC epoch milliseconds.
-- Tables use utf8mb4_bin so that user ids compare case-sensitively.
CREATE TABLE campaigns (
    id                VARCHAR(128)    NOT NULL PRIMARY KEY,
    name              VARCHAR(200)    NOT NULL,
    value             BIGINT  NOT NULL,
    capacity          BIGINT  NOT NULL,
    issued            BIGINT  NOT NULL DEFAULT 0,
    opens_at          BIGINT,
    closes_at         BIGINT,
    coupon_expires_at BIGINT,
    chunk_size        BIGINT  NOT NULL,
    active            INTEGER NOT NULL DEFAULT 1,
    updated_at        BIGINT  NOT NULL,
    CHECK (issued >= 0 AND issued <= capacity)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE users (
    id         VARCHAR(128)   NOT NULL PRIMARY KEY,
    email      VARCHAR(320),
    fcm_token  VARCHAR(4096),
    gender     VARCHAR(16),
    age_group  VARCHAR(16),
    updated_at BIGINT NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE coupons (
    id          VARCHAR(128)   NOT NULL PRIMARY KEY,
    campaign_id VARCHAR(128)   NOT NULL REFERENCES campaigns (id),
    user_id     VARCHAR(128)   NOT NULL,
    code        VARCHAR(32)   NOT NULL UNIQUE,
    request_id  VARCHAR(36)   NOT NULL,
    position    BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT,
    issued_by   VARCHAR(64)   NOT NULL,
    UNIQUE (campaign_id, user_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX coupons_by_user ON coupons (user_id);

CREATE TABLE outbox (
    id            BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id      VARCHAR(36)    NOT NULL UNIQUE,
    topic         VARCHAR(200)    NOT NULL,
    event_key     VARCHAR(200)    NOT NULL,
    payload       TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    published_at  BIGINT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_until BIGINT
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX outbox_unpublished ON outbox (published_at, id);

-- The embedded event log: one row per message, offsets gapless per topic.
CREATE TABLE bus_topics (
    topic VARCHAR(200)   NOT NULL PRIMARY KEY,
    head  BIGINT NOT NULL DEFAULT 0
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE event_log (
    topic      VARCHAR(200)   NOT NULL,
    log_offset BIGINT NOT NULL,
    event_id   VARCHAR(36)   NOT NULL,
    event_key  VARCHAR(200)   NOT NULL,
    payload    TEXT   NOT NULL,
    headers    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (topic, log_offset)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE consumer_offsets (
    group_id    VARCHAR(128)   NOT NULL,
    topic       VARCHAR(200)   NOT NULL,
    next_offset BIGINT NOT NULL DEFAULT 1,
    owner       VARCHAR(64),
    lease_until BIGINT,
    PRIMARY KEY (group_id, topic)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Consumer-side dedupe: an event id handled once per group.
CREATE TABLE processed_events (
    group_id     VARCHAR(128)   NOT NULL,
    event_id     VARCHAR(36)   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, event_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE history (
    id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    event_id    VARCHAR(36)   NOT NULL UNIQUE,
    campaign_id VARCHAR(128)   NOT NULL,
    user_id     VARCHAR(128)   NOT NULL,
    coupon_id   VARCHAR(36)   NOT NULL,
    coupon_code VARCHAR(32)   NOT NULL,
    issued_at   BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    handled_by  VARCHAR(200)   NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE INDEX history_by_campaign ON history (campaign_id);
