"""Sites: which configured network (CIDR) a client address belongs to, for the ``site`` label.

The most specific network wins (a /28 inside a /24 names its own site). Addresses in no configured
network are ``other``.
"""

from __future__ import annotations

import ipaddress

SITE_OTHER = "other"


class SiteMap:
    def __init__(self, sites: dict[str, list[str]] | None = None):
        nets = []
        for name, cidrs in (sites or {}).items():
            for cidr in cidrs:
                nets.append((ipaddress.ip_network(str(cidr), strict=False), name))
        nets.sort(key=lambda item: -item[0].prefixlen)  # most specific first
        self._nets = nets
        self._cache: dict[str, str] = {}

    @property
    def names(self) -> list[str]:
        return sorted({name for _, name in self._nets})

    def site_of(self, endpoint: str) -> str:
        """Site of an "address:port" (or "[v6]:port", or a bare address)."""
        if not self._nets:
            return SITE_OTHER
        host = endpoint
        if host.startswith("["):
            host = host[1 : host.index("]")]
        elif host.count(":") == 1:
            host = host.rsplit(":", 1)[0]
        site = self._cache.get(host)  # by address: a client's every connection has another port
        if site is not None:
            return site
        site = SITE_OTHER
        try:
            addr = ipaddress.ip_address(host)
        except ValueError:
            addr = None
        if addr is not None:
            for net, name in self._nets:
                if addr.version == net.version and addr in net:
                    site = name
                    break
        if len(self._cache) < 65536:
            self._cache[host] = site
        return site
