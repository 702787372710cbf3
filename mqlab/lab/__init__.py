"""The lab that drives the system: the embedded servers, the supervisor of the API and the
workers, the load generator, the runner of experiment rows (the kata's and Kata 4's faulty
ones), and the bench. It reports through the figures and is shown by the faces."""
