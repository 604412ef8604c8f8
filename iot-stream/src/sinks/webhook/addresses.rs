//! Which network addresses a webhook may reach.
//!
//! A webhook whose URL someone other than the operator chose (a user's alert subscription, say)
//! must not become a way to make the hub send requests into its own network: to a database's
//! admin port on `127.0.0.1`, a metadata service on `169.254.169.254`, a neighbour on
//! `10.0.0.0/8`. [`AddressPolicy::PublicOnly`] refuses every address that is not globally
//! routable. The check is made on the addresses the host name resolves to, and the connection
//! goes to one of the addresses that passed, so a name that resolves differently the second time
//! (DNS rebinding) cannot slip past it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Which addresses a [`WebhookSink`](super::WebhookSink) connects to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum AddressPolicy {
    /// Any address the URL's host resolves to (the default: the operator chose the URL).
    #[default]
    Any,
    /// Only globally routable addresses: loopback, private, link-local, shared (CGNAT),
    /// unique-local, multicast, documentation and reserved ranges are refused, also when an IPv6
    /// address embeds an IPv4 one (`::ffff:a.b.c.d`, `64:ff9b::a.b.c.d`).
    PublicOnly,
}

impl AddressPolicy {
    /// Whether the policy lets a webhook connect to `ip`.
    pub fn allows(self, ip: IpAddr) -> bool {
        match self {
            AddressPolicy::Any => true,
            AddressPolicy::PublicOnly => is_public(ip),
        }
    }
}

/// Whether `ip` is globally routable (IANA's special-purpose registries; std's `is_global` is
/// not stable).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(a == 0 // "this network"
        || a == 10 // private
        || a == 127 // loopback
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata services
        || (a == 172 && (16..32).contains(&b)) // private
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 192 && b == 168) // private
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // documentation
        || (a == 203 && b == 0 && c == 113) // documentation
        || a >= 224) // multicast, reserved, broadcast
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        // NAT64: the IPv4 address it stands for decides.
        let [a, b] = s[6].to_be_bytes();
        let [c, d] = s[7].to_be_bytes();
        return is_public_v4(Ipv4Addr::new(a, b, c, d));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || s[0..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible (deprecated) and the rest of ::/96
        || (s[0] & 0xfe00) == 0xfc00 // unique local
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] & 0xff00) == 0xff00 // multicast
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // discard-only
}

#[cfg(test)]
mod tests {
    use super::*;

    fn public(s: &str) -> bool {
        is_public(s.parse().unwrap())
    }

    #[test]
    fn internal_addresses_are_not_public() {
        for s in [
            "0.0.0.0",
            "10.1.2.3",
            "127.0.0.1",
            "100.64.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::127.0.0.1",
            "64:ff9b::a9fe:a9fe",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "2001:db8::1",
            "100::1",
        ] {
            assert!(!public(s), "{s} counted as public");
        }
    }

    #[test]
    fn routable_addresses_are_public() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.169.0.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert!(public(s), "{s} counted as internal");
        }
    }

    #[test]
    fn any_allows_everything_and_public_only_what_is_public() {
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        let global: IpAddr = "8.8.8.8".parse().unwrap();
        assert!(AddressPolicy::Any.allows(local));
        assert!(!AddressPolicy::PublicOnly.allows(local));
        assert!(AddressPolicy::PublicOnly.allows(global));
        assert_eq!(AddressPolicy::default(), AddressPolicy::Any);
    }
}
