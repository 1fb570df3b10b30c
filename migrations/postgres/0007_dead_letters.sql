-- Dead letters an operator settled: replayed to their topic or discarded. Listings show the
-- others by default; the embedded log purges a settled dead letter with the rest of the log
-- (`outbox.retention_ms`), never an unsettled one; a mark is purged after
-- `retention.audit_days`.
CREATE TABLE dead_letters_settled (
    topic         VARCHAR(255) NOT NULL,
    dlt_partition INTEGER      NOT NULL,
    dlt_offset    BIGINT       NOT NULL,
    event_id      VARCHAR(255) NOT NULL,
    outcome       VARCHAR(16)  NOT NULL,
    actor         VARCHAR(64)  NOT NULL,
    at_ms         BIGINT       NOT NULL,
    PRIMARY KEY (topic, dlt_partition, dlt_offset)
);
CREATE INDEX dead_letters_settled_at ON dead_letters_settled (at_ms);
