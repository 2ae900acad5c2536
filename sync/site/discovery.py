"""Finding the site's other gates on the LAN with mDNS/DNS-SD (python-zeroconf).

Each gate advertises ``<device id>._checkpoint-site._udp.local.`` with its site id in the TXT
record and browses for the others of its site, over IPv4, IPv6 or both as it listens. What
discovery says is only an address to try: nothing is believed until a message from it opens (a
pinned root's site credential, a valid signature), so a stranger who advertises itself gains
nothing. docs/site.md#discovery.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import ifaddr

from scanner.base.lazy import lazy_module
from scanner.base.safetext import escape

if TYPE_CHECKING:
    import zeroconf as zc_lib
    from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf
else:
    zc_lib = lazy_module("zeroconf")  # loaded when a site gate starts discovery: ~6 MB a daemon without one never needs

log = logging.getLogger(__name__)

SERVICE = "_checkpoint-site._udp.local."
RESOLVE_TIMEOUT_MS = 3000


def local_addresses(*, ipv6: bool = False) -> list[str]:
    """This machine's addresses other than loopback: IPv4, and with ``ipv6`` IPv6 too (what a
    gate listening on 0.0.0.0, or on :: for both, advertises)."""
    out = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str):
                if not ip.ip.startswith("127."):
                    out.append(ip.ip)
            elif ipv6 and ip.ip[0] != "::1":  # (address, flowinfo, scope id)
                out.append(ip.ip[0])
    return sorted(set(out))


def ip_version(listen_host: str) -> IPVersion:
    """What a gate listening on ``listen_host`` advertises and looks for: IPv4 on an IPv4 address,
    both on ``::`` (the socket takes both), IPv6 on another IPv6 address."""
    if ":" not in listen_host:
        return zc_lib.IPVersion.V4Only
    return zc_lib.IPVersion.All if listen_host == "::" else zc_lib.IPVersion.V6Only


class Discovery:
    """Advertises this gate and reports the site's others to ``on_peer(device_id, (host, port))``
    from its own thread."""

    def __init__(self, site_id: str, device_id: str, port: int, addresses: Sequence[str],
                 on_peer: Callable[[str, tuple[str, int]], None], version: IPVersion | None = None) -> None:
        self.site_id = site_id
        self.version = zc_lib.IPVersion.V4Only if version is None else version
        self.device_id = device_id
        self.port = port
        self.addresses = list(addresses)
        self.on_peer = on_peer
        self._names: queue.Queue[str | None] = queue.Queue()
        self._zc: Zeroconf | None = None
        self._browser: ServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._thread = threading.Thread(target=self._run, name="site-discovery", daemon=True)
        self.error: str | None = None

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            zc = self._zc = zc_lib.Zeroconf(ip_version=self.version)
            self._info = zc_lib.ServiceInfo(SERVICE, f"{self.device_id}.{SERVICE}", port=self.port,
                                     properties={"site": self.site_id, "dev": self.device_id},
                                     parsed_addresses=self.addresses or None)
            self._browser = zc_lib.ServiceBrowser(zc, SERVICE, handlers=[self._changed])
            zc.register_service(self._info)
        except (OSError, zc_lib.Error) as exc:  # no multicast route, no interface, name taken: static peers still work
            self.error = f"mDNS unavailable: {getattr(exc, 'strerror', None) or exc}"
            log.warning("site: %s; only the configured peers are used", self.error)
            return
        while True:
            name = self._names.get()
            if name is None:
                return
            self._resolve(zc, name)

    def _changed(self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange) -> None:
        if state_change in (zc_lib.ServiceStateChange.Added, zc_lib.ServiceStateChange.Updated):
            self._names.put(name)

    def _resolve(self, zc: Zeroconf, name: str) -> None:
        info = zc.get_service_info(SERVICE, name, RESOLVE_TIMEOUT_MS)
        if info is None or info.port is None:
            return
        props = {k.decode("ascii", "replace"): (v or b"").decode("ascii", "replace")
                 for k, v in (info.properties or {}).items()}
        if props.get("site") != self.site_id or props.get("dev") in (None, self.device_id):
            return
        for address in info.parsed_scoped_addresses(self.version):  # a link-local one with its interface
            log.info("site: found %s at %s:%d", escape(props["dev"]), address, info.port)
            self.on_peer(props["dev"], (address, info.port))

    def close(self) -> None:
        self._names.put(None)
        zc = self._zc
        if zc is not None:
            try:
                if self._info is not None:
                    zc.unregister_service(self._info)
            finally:
                zc.close()
        self._thread.join(2.0)
