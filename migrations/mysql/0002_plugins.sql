-- State the consumer plugins keep through their capabilities.

-- kv: values per (campaign, role).
CREATE TABLE plugin_kv (
    campaign_id VARCHAR(64)  NOT NULL,
    role        VARCHAR(64)  NOT NULL,
    k           VARCHAR(255) NOT NULL,
    v           LONGBLOB     NOT NULL,
    PRIMARY KEY (campaign_id, role, k)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- kv: counters per (campaign, role).
CREATE TABLE plugin_counters (
    campaign_id VARCHAR(64)  NOT NULL,
    role        VARCHAR(64)  NOT NULL,
    k           VARCHAR(255) NOT NULL,
    n           BIGINT       NOT NULL,
    PRIMARY KEY (campaign_id, role, k)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- stats: the campaign's live counters.
CREATE TABLE campaign_stats (
    campaign_id VARCHAR(64)  NOT NULL,
    name        VARCHAR(128) NOT NULL,
    value       BIGINT       NOT NULL,
    PRIMARY KEY (campaign_id, name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- email and push sends made for an event, so that a retried event does not send again.
CREATE TABLE plugin_deliveries (
    event_id    VARCHAR(36) NOT NULL,
    role        VARCHAR(64) NOT NULL,
    channel     VARCHAR(16) NOT NULL,
    target_hash CHAR(64)    NOT NULL,
    sent_at     BIGINT      NOT NULL,
    PRIMARY KEY (event_id, role, channel, target_hash)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
