-- Retention: the purges of the de-duplication marks, the sends made per event and the history
-- find old rows by time.
CREATE INDEX processed_events_at ON processed_events (processed_at);
CREATE INDEX plugin_deliveries_at ON plugin_deliveries (sent_at);
CREATE INDEX history_recorded_at ON history (recorded_at);
