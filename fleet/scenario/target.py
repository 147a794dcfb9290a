"""Where a scenario sends its sessions: the gateway (dialect, URL, token variable), its capacity
source, ICE servers, and which orchestrators to aim at."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import Field, field_validator, model_validator

from fleet.spec import EnvName, Spec

Dialect = Literal["livepeer", "daydream", "byoc", "reference"]
GroupBy = Literal["orchestrator", "gpu", "model", "region", "prompt_category"]
Positive = Annotated[float, Field(gt=0)]


# --- target ---------------------------------------------------------------

def http_url(v: str | None) -> str | None:
    if v is not None and not v.startswith(("http://", "https://")):
        raise ValueError(f"{v!r} is not an http(s) URL")
    return v


class GatewayCapacity(Spec):
    """Idle slots from the gateway's ``GET /getNetworkCapabilities``, which go-livepeer serves from its CLI
    server (``-cliAddr``, default 127.0.0.1:5935), not from its media port. go-livepeer itself refreshes the
    live-AI capacity behind it every 25 minutes by default (``-liveAICapReportInterval``)."""

    source: Literal["gateway"]
    url: str | None = Field(None, description="The gateway's CLI URL (go-livepeer -cliAddr), e.g. "
                                              "http://127.0.0.1:5935. Default: the gateway's host at port 5935, "
                                              "go-livepeer's default (which listens on 127.0.0.1 only).")
    refresh_s: Positive = 30.0

    _url = field_validator("url")(http_url)


class NaapCapacity(Spec):
    """Idle slots from the NaaP API's ``GET /v1/streaming/models``; with ``discover_url``, the
    orchestrators its ``GET /v1/discover/orchestrators`` lists for the model become the targets
    sessions are spread across (each capped by ``max_per_orchestrator``, matched by service URI)."""

    source: Literal["naap"]
    url: str = Field(description="NaaP /v1/streaming/models")
    discover_url: str | None = Field(None, description="NaaP /v1/discover/orchestrators (the model is added as "
                                                       "caps=live-video-to-video/<model>)")
    refresh_s: Positive = 60.0


class StaticCapacity(Spec):
    """A fixed slot count, for gateways that publish none. Orchestrators are unknown, so
    the stagger applies to every start and the per-orchestrator cap cannot be enforced."""

    source: Literal["static"]
    slots: int = Field(ge=1)


CapacitySource = Annotated[Union[GatewayCapacity, NaapCapacity, StaticCapacity], Field(discriminator="source")]


class IceServerRef(Spec):
    """A STUN/TURN server for the testers; a TURN credential is named by environment variable, never written."""

    urls: str = Field(pattern=r"^(stun|stuns|turn|turns):", description="e.g. stun:stun.example.org:3478")
    username_env: EnvName | None = Field(None, description="Environment variable holding the TURN username.")
    credential_env: EnvName | None = Field(None, description="Environment variable holding the TURN credential.")


class IceSpec(Spec):
    servers: tuple[IceServerRef, ...] = Field((), description="STUN/TURN servers the testers use (behind NAT).")
    use_gateway_servers: bool = Field(True, description="Also use the servers a gateway names in its WHIP Link "
                                                         "headers (RFC 9725), learnt from its first answer.")


class Target(Spec):
    dialect: Dialect
    url: str | None = Field(None, description="Gateway base URL for every region without its own entry. "
                                              "Omit with dialect 'reference' to start the local reference gateway.")
    region_urls: dict[str, str] = Field(default_factory=dict, description="Gateway base URL per region.")
    token_env: EnvName | None = Field(None, description="Environment variable holding the gateway token.")
    verify_tls: bool = True
    status_every_s: float = Field(2.0, ge=0.5, le=10, description=(
        "Seconds between a session's reads of the gateway's stream status. A stream the gateway failed ends at "
        "the next read, with the gateway's own error (go-livepeer closes the connection, which ICE alone notices "
        "only at its timeout). The runner's state, fps and orchestrator come from the reads; the runner reports "
        "about every 10 s, so a read less often would miss reports, and a swap's two signs (the viewer lost, the "
        "new runner's first report) would no longer fall within the 30 s that make them one swap. Each read "
        "costs the tester CPU: at the default, about a tenth of a session's."))
    ice: IceSpec = Field(default_factory=IceSpec)
    capacity: CapacitySource = Field(default_factory=lambda: GatewayCapacity(source="gateway"))

    _url = field_validator("url")(http_url)

    @field_validator("region_urls")
    @classmethod
    def _region_urls(cls, v: dict[str, str]) -> dict[str, str]:
        for region, url in v.items():
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"{url!r} (region {region}) is not an http(s) URL")
        return v

    @model_validator(mode="after")
    def _needs_url(self) -> Target:
        if self.dialect != "reference" and self.url is None and not self.region_urls:
            raise ValueError(f"dialect {self.dialect!r} needs 'url' or 'region_urls' "
                             "(only 'reference' may omit them and run the local reference gateway)")
        return self

    def url_for(self, region: str) -> str | None:
        return self.region_urls.get(region, self.url)
