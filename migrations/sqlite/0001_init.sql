-- firstcome schema, SQLite dialect. Times are UTC epoch milliseconds.
CREATE TABLE campaigns (
    id                TEXT    NOT NULL PRIMARY KEY,
    name              TEXT    NOT NULL,
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
);

CREATE TABLE users (
    id         TEXT   NOT NULL PRIMARY KEY,
    email      TEXT,
    fcm_token  TEXT,
    gender     TEXT,
    age_group  TEXT,
    updated_at BIGINT NOT NULL
);

CREATE TABLE coupons (
    id          TEXT   NOT NULL PRIMARY KEY,
    campaign_id TEXT   NOT NULL REFERENCES campaigns (id),
    user_id     TEXT   NOT NULL,
    code        TEXT   NOT NULL UNIQUE,
    request_id  TEXT   NOT NULL,
    position    BIGINT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT,
    issued_by   TEXT   NOT NULL,
    UNIQUE (campaign_id, user_id)
);
CREATE INDEX coupons_by_user ON coupons (user_id);

CREATE TABLE outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id      TEXT    NOT NULL UNIQUE,
    topic         TEXT    NOT NULL,
    event_key     TEXT    NOT NULL,
    payload       TEXT    NOT NULL,
    created_at    BIGINT  NOT NULL,
    published_at  BIGINT,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claimed_until BIGINT
);
CREATE INDEX outbox_unpublished ON outbox (published_at, id);

-- The embedded event log: one row per message, offsets gapless per topic.
CREATE TABLE bus_topics (
    topic TEXT   NOT NULL PRIMARY KEY,
    head  BIGINT NOT NULL DEFAULT 0
);

CREATE TABLE event_log (
    topic      TEXT   NOT NULL,
    log_offset BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    event_key  TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    headers    TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (topic, log_offset)
);

CREATE TABLE consumer_offsets (
    group_id    TEXT   NOT NULL,
    topic       TEXT   NOT NULL,
    next_offset BIGINT NOT NULL DEFAULT 1,
    owner       TEXT,
    lease_until BIGINT,
    PRIMARY KEY (group_id, topic)
);

-- Consumer-side dedupe: an event id handled once per group.
CREATE TABLE processed_events (
    group_id     TEXT   NOT NULL,
    event_id     TEXT   NOT NULL,
    processed_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, event_id)
);

CREATE TABLE history (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT   NOT NULL UNIQUE,
    campaign_id TEXT   NOT NULL,
    user_id     TEXT   NOT NULL,
    coupon_id   TEXT   NOT NULL,
    coupon_code TEXT   NOT NULL,
    issued_at   BIGINT NOT NULL,
    recorded_at BIGINT NOT NULL,
    handled_by  TEXT   NOT NULL
);
CREATE INDEX history_by_campaign ON history (campaign_id);
