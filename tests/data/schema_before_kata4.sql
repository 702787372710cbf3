-- mqlab schema: PostgreSQL is the source of truth for every order and job.
-- Applied idempotently on start (mqlab services up, mqlab api, mqlab worker).

CREATE TABLE IF NOT EXISTS orders (
    id           bigserial PRIMARY KEY,
    product      text          NOT NULL CHECK (length(product) BETWEEN 1 AND 200),
    quantity     integer       NOT NULL CHECK (quantity >= 1),
    price        numeric(12,2) NOT NULL CHECK (price >= 0),
    status       text          NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'dead')),
    created_at   timestamptz   NOT NULL DEFAULT clock_timestamp(),
    updated_at   timestamptz   NOT NULL DEFAULT clock_timestamp(),
    completed_at timestamptz
);

-- One job per order today; the reports are computed from these timestamps.
CREATE TABLE IF NOT EXISTS jobs (
    id          text        PRIMARY KEY,
    order_id    bigint      NOT NULL REFERENCES orders (id) ON DELETE CASCADE,
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'processing', 'completed', 'failed', 'dead')),
    worker_id   text,
    attempts    integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    last_error  text,
    enqueued_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    started_at  timestamptz,
    finished_at timestamptz
);

CREATE INDEX IF NOT EXISTS jobs_order_id_idx ON jobs (order_id);
CREATE INDEX IF NOT EXISTS jobs_status_idx ON jobs (status);
CREATE INDEX IF NOT EXISTS orders_status_idx ON orders (status);
