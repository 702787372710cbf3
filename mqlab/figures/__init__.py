"""The data and the figures: what a run measured, the ledger of every order, statistics, the
tables, the timelines and the report. Nothing here starts or signals a process."""
