"""``fleet gateway serve``: run the reference gateway until interrupted."""

from __future__ import annotations

import argparse
import ipaddress
import logging
from typing import Any

from fleet.errors import UsageError


def add(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser("gateway", help="the local reference gateway", description=__doc__)
    verbs = p.add_subparsers(dest="verb", metavar="VERB")
    verbs.required = True
    serve = verbs.add_parser("serve", help="serve the reference gateway (Ctrl-C stops it cleanly)")
    serve.add_argument("--config", metavar="FILE", help="gateway config YAML (default: the built-in network)")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1, or the config's)")
    serve.add_argument("--port", type=int, help="port (default 8937, or the config's; 0 picks a free one)")
    serve.add_argument("--cli-port", type=int, help="the CLI server's port, which serves /getNetworkCapabilities "
                       "(default 5935 as go-livepeer, or the config's; 0 picks a free one)")
    serve.add_argument("--relay", action="store_true", help="forward frames without transforming them")
    serve.set_defaults(run=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from fleet.gateway.config import default_config, load_gateway_config
    from fleet.webrtc import use_host_addresses

    from fleet.gateway.server import serve

    config = load_gateway_config(args.config) if args.config else default_config()
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("cli_port", args.cli_port)) if v is not None}
    if args.relay:
        overrides["relay"] = True
    if overrides:
        config = config.model_copy(update=overrides)
    try:
        address = ipaddress.ip_address(config.host)
    except ValueError:
        raise UsageError(f"--host must be an IP address, got {config.host!r}") from None
    if config.media_host is not None:
        use_host_addresses([str(config.media_host)])  # media apart from HTTP (go-livepeer's LIVE_AI_WHIP_ADDR)
    elif not address.is_unspecified:
        use_host_addresses([config.host])  # ICE candidates on the bound address only
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import asyncio

    asyncio.run(serve(config))
    return 0
