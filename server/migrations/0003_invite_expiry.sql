-- An invite may expire: after expires_at (ms since the epoch) the rater's token is refused as
-- expired. NULL: it never expires (every invite made before this migration).
ALTER TABLE raters ADD COLUMN expires_at BIGINT;
