"""The `make run` demo: a CRM, an ERP and a payment gateway (`demo.systems`) connected by the
example flows (`examples/flows/`), under a steady load, watched live, and accounted for at the end.

Run it from the repository root: `make run`, or `PYTHONPATH=examples .venv/bin/python -m demo`.
"""
