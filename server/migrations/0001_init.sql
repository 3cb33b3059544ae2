-- The annotation store. One dialect for SQLite and PostgreSQL: TEXT ids (UUIDv7, time-ordered),
-- BIGINT for integers, flags and times (Unix milliseconds), DOUBLE PRECISION for scores, JSON as TEXT.
-- Invariants the application relies on are constraints here, so concurrent servers cannot break them.

CREATE TABLE settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE projects (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    config TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE prompts (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    reference TEXT,
    split TEXT NOT NULL CHECK (split IN ('train', 'eval')),
    source TEXT NOT NULL,
    used_round BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX prompts_project ON prompts(project_id, split, used_round);

CREATE TABLE checkpoints (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    round BIGINT NOT NULL,
    path TEXT NOT NULL,
    pairs BIGINT NOT NULL,
    report TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE rounds (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    number BIGINT NOT NULL,
    acquisition TEXT NOT NULL,
    policy_checkpoint TEXT REFERENCES checkpoints(id),
    stats TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (project_id, number)
);

CREATE TABLE completions (
    id TEXT PRIMARY KEY,
    prompt_id TEXT NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
    text TEXT NOT NULL,
    source TEXT NOT NULL,
    logp DOUBLE PRECISION,
    tokens BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX completions_prompt ON completions(prompt_id);

-- kind: 'train' (acquired or imported, labelled by raters or a judge) or 'gold' (known answer).
CREATE TABLE pairs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    prompt_id TEXT NOT NULL REFERENCES prompts(id) ON DELETE CASCADE,
    completion_a TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
    completion_b TEXT NOT NULL REFERENCES completions(id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('train', 'gold')),
    round BIGINT,
    acquisition TEXT,
    r_a DOUBLE PRECISION,
    r_b DOUBLE PRECISION,
    margin DOUBLE PRECISION,
    entropy DOUBLE PRECISION,
    gold_choice TEXT CHECK (gold_choice IS NULL OR gold_choice IN ('a', 'b', 'tie', 'both_bad')),
    target_votes BIGINT NOT NULL,
    votes BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);
-- Pairs still short of votes, in the order raters receive them: the next-pair query and the
-- progress count walk this index, not every pair of the project.
CREATE INDEX pairs_open ON pairs(project_id, created_at, id) WHERE kind = 'train' AND votes < target_votes;

CREATE TABLE raters (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    quota BIGINT,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- Slot s of a pair is held by one rater: (pair_id, slot) caps the overlap, (pair_id, rater_id)
-- keeps a rater to one slot. A lease past lease_expires on an unfinished slot may be taken over.
CREATE TABLE assignments (
    pair_id TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    slot BIGINT NOT NULL,
    rater_id TEXT NOT NULL REFERENCES raters(id) ON DELETE CASCADE,
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    leased_at BIGINT NOT NULL,
    lease_expires BIGINT NOT NULL,
    done BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (pair_id, slot),
    UNIQUE (pair_id, rater_id)
);
CREATE INDEX assignments_rater ON assignments(rater_id, done);

-- Human labels. One per (pair, rater).
CREATE TABLE labels (
    id TEXT PRIMARY KEY,
    pair_id TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    rater_id TEXT NOT NULL REFERENCES raters(id) ON DELETE CASCADE,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'both_bad', 'skip')),
    left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
    time_ms BIGINT NOT NULL,
    rationale TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (pair_id, rater_id)
);
CREATE INDEX labels_rater ON labels(rater_id, created_at);

-- Judge and oracle labels, kept apart from human ones. One per (pair, judge, order).
CREATE TABLE judge_labels (
    id TEXT PRIMARY KEY,
    pair_id TEXT NOT NULL REFERENCES pairs(id) ON DELETE CASCADE,
    judge TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN ('a', 'b', 'tie', 'none')),
    first_shown TEXT NOT NULL CHECK (first_shown IN ('a', 'b')),
    rationale TEXT,
    created_at BIGINT NOT NULL,
    UNIQUE (pair_id, judge, first_shown)
);

CREATE TABLE evaluations (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    checkpoint_id TEXT REFERENCES checkpoints(id) ON DELETE CASCADE,
    judge TEXT NOT NULL,
    baseline TEXT NOT NULL,
    win_rate DOUBLE PRECISION NOT NULL,
    stderr DOUBLE PRECISION NOT NULL,
    n BIGINT NOT NULL,
    details TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- state: queued, running, done, failed, cancelled. A running job whose heartbeat stops is
-- requeued (or failed after too many attempts) by whichever server sees it first.
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    params TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed', 'cancelled')),
    progress TEXT NOT NULL,
    result TEXT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    owner TEXT,
    heartbeat BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX jobs_state ON jobs(state, created_at);
