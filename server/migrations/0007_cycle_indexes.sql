-- The cycle's reads (`store::cycle`: the newest round's pairs by votes, the raters' batch) and
-- the rounds list count a round's pairs: by index, not by walking every pair of the project.
CREATE INDEX pairs_round ON pairs(project_id, round);
