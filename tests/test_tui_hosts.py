"""The TUI with workers on several hosts: grouped by host, each host's jobs/s."""

from __future__ import annotations

from dataclasses import replace

from mqlab.experiments import load
from mqlab.faces.tui.app import LabApp
from mqlab.faces.tui.fixed import FixedLab, FixedSource, fixed_frame, two_hosts_frame
from mqlab.faces.tui.lanes import Timeline, host_lanes
from mqlab.faces.tui.model import NO_HOST, WorkerRow, group_by_host
from mqlab.faces.tui.panels import HOST_KEY, WorkersTable
from mqlab.protocol.events import WorkerState
from mqlab.system.observe import GONE, HostInfo


def test_one_host_is_not_grouped() -> None:
    frame = fixed_frame()
    assert group_by_host(frame, [w.id for w in frame.workers]) is None
    one = replace(frame, hosts=(HostInfo("box", 5, 4, 10, 2.0),))
    assert group_by_host(one, [w.id for w in one.workers]) is None
    assert [group for group, _ in host_lanes(one)] == [None]


def test_workers_group_by_host_a_dead_one_under_its_last_host_an_unknown_one_by_its_id() -> None:
    frame = two_hosts_frame()
    ids = [w.id for w in frame.workers] + ["hosta-w7", "hostz-w1"]
    groups = group_by_host(frame, ids)
    assert groups is not None
    assert [(g.host, g.ids) for g in groups] == [
        ("hosta", ("hosta-w1", "hosta-w2", "hosta-w7")),  # w7: no row, named for hosta
        ("hostb", ("hostb-w1", "hostb-w2", "hostb-w3")),  # w3 is dead: its last heartbeat's
        (GONE, ("hostz-w1",)),
    ]
    assert [g.info.per_second if g.info else None for g in groups] == [1.2, 0.8, None]
    # Workers not beating yet (no host): under the live host their id names, else NO_HOST.
    starting = [
        WorkerRow(wid, 9, WorkerState.STARTING, "", None, 0) for wid in ("hostc-w1", "hosta-w4")
    ]
    frame = replace(frame, workers=(*frame.workers, *starting))
    groups = group_by_host(frame, ["hostc-w1", "hosta-w1", "hosta-w4"])
    assert groups is not None
    assert [(g.host, g.ids, g.info) for g in groups] == [
        ("hosta", ("hosta-w1", "hosta-w4"), frame.hosts[0]),
        (NO_HOST, ("hostc-w1",), None),
    ]


async def test_the_workers_table_and_timeline_show_each_host_with_its_jobs_per_second() -> None:
    source = FixedSource(two_hosts_frame())
    app = LabApp(source, FixedLab(load("kata3")))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        table = app.query_one(WorkersTable)
        assert [k.value for k in table.rows] == [
            f"{HOST_KEY}hosta", "hosta-w1", "hosta-w2",
            f"{HOST_KEY}hostb", "hostb-w1", "hostb-w2", "hostb-w3",
        ]  # fmt: skip
        header = [str(c) for c in table.get_row(f"{HOST_KEY}hostb")]
        assert header == ["hostb", "", "jobs/s", "0.8", "", "4"]
        # The cursor starts on a worker, and steps over the hosts' lines both ways.
        assert app.selected_worker() is not None
        assert app.selected_worker().id == "hosta-w1"  # type: ignore[union-attr]
        seen = []
        for key in ["down"] * 5 + ["up"] * 5:
            await pilot.press(key)
            worker = app.selected_worker()
            assert worker is not None, f"the cursor on a host's line after {key}"
            seen.append(worker.id)
        assert seen == [
            "hosta-w2", "hostb-w1", "hostb-w2", "hostb-w3", "hostb-w3",
            "hostb-w2", "hostb-w1", "hosta-w2", "hosta-w1", "hosta-w1",
        ]  # fmt: skip
        timeline = app.query_one(Timeline).render().plain.splitlines()
        assert timeline[0].startswith("── hosta  1.2 jobs/s ──")
        # Under its host's line a worker is named without the host's name.
        assert [line.split()[0] for line in timeline[1:3]] == ["w1", "w2"]
        assert [str(table.get_row(k)[0]) for k in ("hosta-w1", "hostb-w3")] == ["w1", "w3"]
        assert timeline[3].startswith("── hostb  0.8 jobs/s ──")
        # A new worker on hosta goes into hosta's group, the cursor stays where it was.
        await pilot.press("down")
        new = WorkerRow("hosta-w3", 41009, WorkerState.IDLE, "", None, 0, host="hosta")
        frame = source.frame
        source.frame = replace(frame, workers=(*frame.workers, new))
        for _ in range(20):
            await pilot.pause(0.1)
            if "hosta-w3" in [k.value for k in table.rows]:
                break
        keys = [k.value for k in table.rows]
        assert keys.index("hosta-w3") == keys.index("hosta-w2") + 1
        assert app.selected_worker().id == "hosta-w2"  # type: ignore[union-attr]
