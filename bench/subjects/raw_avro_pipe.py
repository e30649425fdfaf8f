"""Issue item 2, the limit for a mediation process: raw_pipe's loop plus bare fastavro decode,
the mediation written by hand (`workload.mediate`: two filters, the map to
CustomerUpsertRequest, the EU/US route) and encode.

    python -m bench.subjects.raw_avro_pipe --bootstrap B --source T --eu T --us T --group G

Per record: skip the single-object prefix (10 bytes), schemaless_reader with the parsed
CustomerChanged schema, `mediate` with the event time from the `ce_time` header (the flow maps
`attributes.time`), schemaless_writer with the parsed CustomerUpsertRequest schema behind its
prefix, and `workload.output_headers` (a derived ce_id, the output type). No schema lookup by
fingerprint, no validation beyond fastavro's: the least a correct hand-written mediation does.
Same loop, guarantee and producer settings as raw_pipe; uvloop when installed.
"""

import io
from datetime import datetime

from aiokafka.structs import ConsumerRecord
from fastavro import schemaless_reader, schemaless_writer

from bench.subjects.raw_pipe import Handle, Output, parse, run, run_pipe
from bench.workload import (
    INPUT_PREFIX_LENGTH,
    INPUT_SCHEMA,
    OUTPUT_PREFIX,
    OUTPUT_SCHEMA,
    mediate,
    output_headers,
)


def mediation(eu: str, us: str) -> Handle:
    topics = {"EU": eu, "US": us}

    def handle(record: ConsumerRecord[bytes, bytes]) -> Output:
        headers = dict(record.headers)
        data = schemaless_reader(io.BytesIO(record.value[INPUT_PREFIX_LENGTH:]), INPUT_SCHEMA, None)
        result = mediate(data, datetime.fromisoformat(headers["ce_time"].decode()))  # type: ignore[arg-type]
        if result is None:
            return None
        region, request = result
        out = io.BytesIO()
        out.write(OUTPUT_PREFIX)
        schemaless_writer(out, OUTPUT_SCHEMA, request)
        return (
            topics[region],
            record.key,
            out.getvalue(),
            output_headers(list(record.headers), headers["ce_id"].decode()),
        )

    return handle


if __name__ == "__main__":
    arguments = parse()
    run(run_pipe(arguments, mediation(arguments.eu, arguments.us)))
