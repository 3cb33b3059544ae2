-- The cycle's reads (`store::cycle`: the newest round's pairs by votes, the raters' batch) and
-- the rounds list count a round's pairs: by index, not by walking every pair of the project.
-- Partial (acquired pairs only): a plain (project_id, round) index is one SQLite's planner
-- prefers for the raters' open-pair queries over `pairs_open`, which walks every pair of the
-- project on each label (labels/s fell by a third); queries on `round = ?` still use this one.
CREATE INDEX pairs_round ON pairs(project_id, round) WHERE round IS NOT NULL;
