"""bus-jsonl: an outbound adapter for bus that appends each event to a file as one JSON line.

bus finds it through the entry point in this package's pyproject.toml; the code is in
`bus_jsonl.adapter`.
"""
