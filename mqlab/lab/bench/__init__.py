"""`mqlab bench`: the producer's and the consumers' hot paths, measured.

Three measurements, each after a reset of every order, job and queue entry:

* POST /orders sustained rate and latency at 1 and at 10 keep-alive clients, no worker running
  (closed loop: each client sends its next order when the previous answer arrived);
* drain rate of 0-second jobs with 1 and with 4 workers: N jobs are accepted by the API with no
  worker running, moved aside while the workers start, and put back once all of them are
  idle, so the figure is the steady drain rate rather than interpreter start-up; jobs/s is
  N / (last job's finished_at - first job's started_at), from PostgreSQL;
* dispatch latency with 1 and 4 idle workers: orders sent one at a time at a modest rate;
  jobs.started_at - jobs.enqueued_at from PostgreSQL (enqueued_at is stamped inside the
  INSERT, so this spans commit, LPUSH, the BLMOVE wake-up and the claim).

Without REDIS_URL / DATABASE_URL (or --redis-url / --database-url) the embedded servers are
started in a temporary folder, owned by this process, and stopped at the end; the API and the
workers are children of a Supervisor. Nothing outlives the bench: not on an error, not on
Ctrl-C or SIGTERM (cleanup runs), not on SIGKILL (parent-death signal).
"""

from mqlab.lab.bench.command import run

__all__ = ["run"]
