"""wgagent: routes, rules and firewall that follow connected WireGuard peers."""

__version__ = "0.1.0"
