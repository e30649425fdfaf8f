"""Run the CRM, the ERP and the payment gateway in one process, until SIGINT or SIGTERM.

    PYTHONPATH=examples python -m demo.systems --bus-url http://127.0.0.1:8080 \\
        [--crm-port 9201] [--erp-port 9202] [--gateway-port 9203]

Secrets come from the environment (see `config.py`), fault injection from `DEMO_FAULTS` and
`DEMO_SEED` (see `faults.py`). Once all three listen, one line goes to stdout:
`demo systems ready: crm=http://127.0.0.1:9201 erp=http://127.0.0.1:9202/erp
gateway=http://127.0.0.1:9203` (a port of 0 picks a free one, and the line gives it).
"""

import argparse
import asyncio
import logging
import signal
import sys

from demo.systems.config import Secrets
from demo.systems.crm import Crm
from demo.systems.erp import Erp
from demo.systems.faults import injector, process_seed
from demo.systems.gateway import Gateway
from demo.systems.serving import Served, serve

log = logging.getLogger("demo.systems")


def arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m demo.systems", description="The demo's CRM, ERP and payment gateway."
    )
    parser.add_argument("--crm-port", type=int, default=9201)
    parser.add_argument("--erp-port", type=int, default=9202)
    parser.add_argument("--gateway-port", type=int, default=9203)
    parser.add_argument(
        "--bus-url",
        default="http://127.0.0.1:8080",
        help="where the CRM sends its webhooks (the bus's HTTP server)",
    )
    return parser.parse_args(argv)


async def run(options: argparse.Namespace) -> None:
    secrets = Secrets.from_environment()
    seed = process_seed()
    crm = Crm(
        bus_url=options.bus_url,
        webhook_secret=secrets.crm_webhook_secret,
        api_token=secrets.crm_api_token,
    )
    erp = Erp(password=secrets.erp_password, faults=injector(seed, "erp"))
    gateway = Gateway(
        client_id=secrets.gateway_client_id,
        client_secret=secrets.gateway_client_secret,
        faults=injector(seed, "gateway"),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    served: list[Served] = []
    try:
        for app, port in (
            (crm.app(), options.crm_port),
            (erp.app(), options.erp_port),
            (gateway.app(), options.gateway_port),
        ):
            served.append(await serve(app, port))
        crm_url, erp_url, gateway_url = (s.url for s in served)
        print(
            f"demo systems ready: crm={crm_url} erp={erp_url}/erp gateway={gateway_url}",
            flush=True,
        )
        await stop.wait()
        log.info("stopping")
    finally:
        # Newest first: the CRM, whose webhooks may still be under way, stops last.
        for server in reversed(served):
            await server.stop()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    options = arguments(argv)
    try:
        asyncio.run(run(options))
    except OSError as error:  # a port in use, most likely
        log.error("cannot start: %s", error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
