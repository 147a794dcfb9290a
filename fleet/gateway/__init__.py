"""The reference gateway: a real WebRTC stand-in for a Livepeer gateway and its orchestrators."""

from fleet.gateway.config import GatewayConfig, default_config, load_gateway_config, reference_capacity

__all__ = ["GatewayConfig", "default_config", "load_gateway_config", "reference_capacity"]
