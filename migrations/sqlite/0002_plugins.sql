-- State the consumer plugins keep through their capabilities.

-- kv: values per (campaign, role).
CREATE TABLE plugin_kv (
    campaign_id TEXT NOT NULL,
    role        TEXT NOT NULL,
    k           TEXT NOT NULL,
    v           BLOB NOT NULL,
    PRIMARY KEY (campaign_id, role, k)
);

-- kv: counters per (campaign, role).
CREATE TABLE plugin_counters (
    campaign_id TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    k           TEXT   NOT NULL,
    n           BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, role, k)
);

-- stats: the campaign's live counters.
CREATE TABLE campaign_stats (
    campaign_id TEXT   NOT NULL,
    name        TEXT   NOT NULL,
    value       BIGINT NOT NULL,
    PRIMARY KEY (campaign_id, name)
);

-- email and push sends made for an event, so that a retried event does not send again.
CREATE TABLE plugin_deliveries (
    event_id    TEXT   NOT NULL,
    role        TEXT   NOT NULL,
    channel     TEXT   NOT NULL,
    target_hash TEXT   NOT NULL,
    sent_at     BIGINT NOT NULL,
    PRIMARY KEY (event_id, role, channel, target_hash)
);
