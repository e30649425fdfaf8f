"""Worker crash: SIGKILL `bus run` at random moments while events stream through inbound REST,
mediation and outbound REST; every event the bus accepted (202) still reaches the sink."""

from pathlib import Path

from tests.chaos.pipeline import Pipeline
from tests.chaos.sink import ChaosSink


async def test_pipeline_delivers_every_accepted_event(
    tmp_path: Path, bootstrap_servers: str
) -> None:
    """The harness itself, no fault: 100 events end to end, each applied once."""
    async with ChaosSink() as sink, Pipeline(bootstrap_servers, tmp_path, sink) as pipeline:
        await pipeline.start_bus()
        await pipeline.send(100, keys=10)
        await pipeline.wait_delivered(within=60)
        assert await pipeline.stop_bus() == 0
        assert "stopped: in-flight work finished and committed" in pipeline.own_log()
    tally = pipeline.tally()
    assert tally["accepted"] == tally["delivered"] == 100, tally
    assert tally["lost"] == tally["effective_duplicates"] == 0, tally
    assert await pipeline.dead_letters() == 0
