-- A rater's progress counts their labels on every request: on this covering index that count
-- reads index entries only, not a table row per label.
CREATE INDEX labels_rater_choice ON labels(rater_id, choice);
