-- Auto-continue: at most one `continue` job waiting or running per project, whichever server
-- process saw the round labelled first (a second insert hits this index and does nothing).
CREATE UNIQUE INDEX jobs_one_continue ON jobs(project_id) WHERE kind = 'continue' AND state IN ('queued', 'running');
