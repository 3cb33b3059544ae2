-- Human win-rate checks: an evaluation's samples (policy against reference) sent to a chosen
-- group of raters through the ordinary rater flow. The pairs table's kind CHECK cannot be
-- altered on SQLite, so a check's pairs are kind 'train' with check_id set; every query that
-- reads training data excludes them with `check_id IS NULL`.

CREATE TABLE human_checks (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    evaluation_id TEXT NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
    overlap BIGINT NOT NULL CHECK (overlap >= 1),
    created_at BIGINT NOT NULL
);
CREATE INDEX human_checks_project ON human_checks(project_id, created_at);

-- The raters a check is sent to; no one else is ever given its pairs.
CREATE TABLE check_raters (
    check_id TEXT NOT NULL REFERENCES human_checks(id) ON DELETE CASCADE,
    rater_id TEXT NOT NULL REFERENCES raters(id) ON DELETE CASCADE,
    PRIMARY KEY (check_id, rater_id)
);
CREATE INDEX check_raters_rater ON check_raters(rater_id);

ALTER TABLE pairs ADD COLUMN check_id TEXT REFERENCES human_checks(id) ON DELETE CASCADE;
CREATE INDEX pairs_check ON pairs(check_id, created_at, id) WHERE check_id IS NOT NULL;

-- A check pair's place among the evaluation's samples and the judge's outcome for the policy
-- (completion A) as the evaluation stored it.
CREATE TABLE check_pairs (
    pair_id TEXT PRIMARY KEY REFERENCES pairs(id) ON DELETE CASCADE,
    check_id TEXT NOT NULL REFERENCES human_checks(id) ON DELETE CASCADE,
    sample BIGINT NOT NULL,
    judge TEXT NOT NULL CHECK (judge IN ('win', 'tie', 'loss')),
    UNIQUE (check_id, sample)
);
