-- mqlab schema: PostgreSQL is the source of truth for every order and job.
-- Applied idempotently on start (mqlab services up, mqlab api, mqlab worker), and migrates a
-- database made by an older mqlab in place (the DO blocks at the end).
--
-- A job's life (docs/architecture.md draws it):
--   pending -> processing -> completed
--              processing -> retrying -> processing ...   (a transient failure, backing off)
--              processing -> dead                          (permanent, or out of attempts)
-- and its order follows: pending, processing, retrying, completed, or failed (job dead).

CREATE TABLE IF NOT EXISTS orders (
    id           bigserial PRIMARY KEY,
    product      text          NOT NULL CHECK (length(product) BETWEEN 1 AND 200),
    quantity     integer       NOT NULL CHECK (quantity >= 1),
    price        numeric(12,2) NOT NULL CHECK (price >= 0),
    status       text          NOT NULL DEFAULT 'pending'
                 CONSTRAINT orders_status_check
                 CHECK (status IN ('pending', 'processing', 'retrying', 'completed', 'failed')),
    created_at   timestamptz   NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz   NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz
);

-- One job per order; the reports are computed from these timestamps and from job_attempts.
-- attempts counts claims (deliveries), replayed or not: an attempt's number is its value after
-- the claim. replay_base is its value when the job was last replayed from the dead letters;
-- since_replay = attempts - replay_base (the queries' alias) is what the retry policy counts.
CREATE TABLE IF NOT EXISTS jobs (
    id              text        PRIMARY KEY,
    order_id        bigint      NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status          text        NOT NULL DEFAULT 'pending'
                    CONSTRAINT jobs_status_check
                    CHECK (status IN ('pending', 'processing', 'retrying', 'completed', 'dead')),
    worker_id       text,
    -- Which run of worker_id made the claim (its heartbeat's `instance`): a worker started
    -- again with the same id is another run, and takes back what its previous one held.
    worker_instance text,
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    replay_base     integer     NOT NULL DEFAULT 0 CHECK (replay_base >= 0),
    last_error      text,
    enqueued_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at      timestamptz,
    finished_at     timestamptz,
    next_attempt_at timestamptz
);

-- Every attempt that did not complete, kept: an append-only log, its row written by the
-- statement that ends the attempt. The attempt under way, and the completed one, are the job's
-- own row (status, attempts, worker_id, started_at, finished_at): so the hot path, a claim and
-- a completion, writes no more than before Kata 4. job_history (below) shows every attempt.
--   failed       the work failed (retried, or the job went dead: jobs.status says which)
--   crashed      its worker died during it (the next claim of the job found it unfinished)
--   handed_back  its worker gave it back unfinished (a stop, a lost claim)
--   reclaimed    Redis lost the message and the reconciler queued the job again
--   completed    only if a completion ever needs recording apart from its job (none does now)
CREATE TABLE IF NOT EXISTS job_attempts (
    job_id          text        NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    attempt         integer     NOT NULL CHECK (attempt >= 1),
    worker_id       text        NOT NULL,
    started_at      timestamptz NOT NULL,
    finished_at     timestamptz NOT NULL,
    outcome         text        NOT NULL
                    CONSTRAINT job_attempts_outcome_check
                    CHECK (outcome IN ('completed', 'failed', 'crashed', 'handed_back',
                                       'reclaimed')),
    error           text,
    next_attempt_at timestamptz,
    PRIMARY KEY (job_id, attempt)
);

-- Every attempt of every job, in one place: the ones that did not complete (job_attempts),
-- and each job's own row as its completed or running attempt. `psql -c 'table job_history'`.
CREATE OR REPLACE VIEW job_history AS
SELECT job_id, attempt, worker_id, started_at, finished_at, outcome, error, next_attempt_at
FROM job_attempts
UNION ALL
SELECT id, attempts, worker_id, started_at, finished_at,
       CASE status WHEN 'completed' THEN 'completed' ELSE 'running' END, NULL, NULL
FROM jobs
WHERE status IN ('completed', 'processing') AND attempts >= 1 AND worker_id IS NOT NULL
  AND started_at IS NOT NULL;

-- Migrations of a database made by an older mqlab (each a no-op once done).
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS replay_base integer NOT NULL DEFAULT 0
    CHECK (replay_base >= 0);
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS worker_instance text;
DO $$
BEGIN
    -- The status CHECKs gained 'retrying' (and lost the statuses no row of that table can
    -- have: an order is failed, never dead; a job is dead, never failed). Replaced only when
    -- they lack it, so that a start does not re-validate the tables every time.
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'jobs_status_check' AND conrelid = 'jobs'::regclass
          AND pg_get_constraintdef(oid) LIKE '%retrying%'
    ) THEN
        ALTER TABLE jobs DROP CONSTRAINT IF EXISTS jobs_status_check;
        UPDATE jobs SET status = 'dead' WHERE status = 'failed';
        ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
            CHECK (status IN ('pending', 'processing', 'retrying', 'completed', 'dead'));
    END IF;
    IF NOT EXISTS (
        SELECT 1 FROM pg_constraint
        WHERE conname = 'orders_status_check' AND conrelid = 'orders'::regclass
          AND pg_get_constraintdef(oid) LIKE '%retrying%'
    ) THEN
        ALTER TABLE orders DROP CONSTRAINT IF EXISTS orders_status_check;
        UPDATE orders SET status = 'failed' WHERE status = 'dead';
        ALTER TABLE orders ADD CONSTRAINT orders_status_check
            CHECK (status IN ('pending', 'processing', 'retrying', 'completed', 'failed'));
    END IF;
END
$$;

CREATE INDEX IF NOT EXISTS jobs_order_id_idx ON jobs (order_id);
CREATE INDEX IF NOT EXISTS jobs_status_idx ON jobs (status);
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status);
-- The jobs completed in the last seconds (db.COMPLETED_BY_WORKER: each host's jobs/s in
-- /stats), found without a scan of every job. Partial: only completed jobs have a place in
-- it, and a job enters it once, when it completes.
CREATE INDEX IF NOT EXISTS jobs_completed_at_idx ON jobs (finished_at) WHERE status = 'completed';
