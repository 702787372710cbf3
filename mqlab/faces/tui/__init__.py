"""`mqlab tui`: the live lab in the terminal (Textual).

model.py    what is shown (Frame) and the two interfaces the view uses (Source, Lab)
source.py   LiveSource: frames from Redis, PostgreSQL, mqlab:events and the supervisor
lab.py      LiveLab: the controls, on the shared Stack, Supervisor and Runner
fixed.py    FixedSource / FixedLab: deterministic stand-ins for snapshot tests
app.py      LabApp: layout, keys, refresh loop; panels.py, lanes.py (the live timeline),
            experiments_panel.py, screens.py and lab.tcss draw it
main.py     run(): what the CLI command calls
"""
