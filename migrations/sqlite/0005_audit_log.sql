-- Every change made on the admin plane or applied from a campaign file: who (a credential's
-- name, "file" or "cli"), when, what, and digests of the document before and after. Purged
-- after `retention.audit_days`.
CREATE TABLE audit_log (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms         BIGINT NOT NULL,
    actor         VARCHAR(64) NOT NULL,
    action        VARCHAR(64) NOT NULL,
    target        VARCHAR(255) NOT NULL,
    before_sha256 VARCHAR(64),
    after_sha256  VARCHAR(64),
    detail        VARCHAR(1024)
);
CREATE INDEX audit_log_at ON audit_log (at_ms);
CREATE INDEX audit_log_target ON audit_log (target, id);
