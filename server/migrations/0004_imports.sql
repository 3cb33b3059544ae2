-- Imports commit in batches so raters keep labelling while a large file goes in. An import is a
-- row here; the prompts and pairs it writes carry its id and stay out of every reader's sight
-- (raters, acquisition, training, exports) until it is done. An import whose batches stopped
-- (a crash, an error) is deleted with everything it wrote once its heartbeat is stale.
CREATE TABLE imports (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    done BIGINT NOT NULL DEFAULT 0,
    records BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    heartbeat BIGINT NOT NULL
);
CREATE INDEX imports_pending ON imports(done, heartbeat);
ALTER TABLE prompts ADD COLUMN import_id TEXT;
ALTER TABLE pairs ADD COLUMN import_id TEXT;
CREATE INDEX prompts_import ON prompts(import_id) WHERE import_id IS NOT NULL;
-- An imported pair is stored once per project: a hash of its kind and texts (importing a file
-- twice, or a file that repeats a row, adds nothing).
ALTER TABLE pairs ADD COLUMN import_key TEXT;
CREATE UNIQUE INDEX pairs_import_key ON pairs(project_id, import_key);
-- The other fields of an imported TRL row, a JSON object, written back in the DPO export.
ALTER TABLE pairs ADD COLUMN extra TEXT;
-- An admin may disable a prompt: it is never acquired or evaluated again; its pairs and labels
-- stay. (A prompt without pairs may be deleted outright.)
ALTER TABLE prompts ADD COLUMN disabled BIGINT NOT NULL DEFAULT 0;
