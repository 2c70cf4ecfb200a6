//! The client address of a request: its TCP peer, or, when the peer is a
//! trusted proxy (a Caddy on the same host, by default), the last hop of
//! its `X-Forwarded-For`. Per-client limits count by it; logs show it.

use std::net::IpAddr;

use actix_web::dev::ServiceRequest;
use actix_web::HttpMessage;

/// The client address, kept in a request's extensions by the gate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The client address of a request from `peer` carrying these
/// `X-Forwarded-For` values (in header order).
///
/// Only the last hop counts: a proxy appends the address it saw, and
/// anything before it is what the client chose to send. A trusted peer
/// whose header is missing or unreadable is itself the client.
pub fn client_address<'a>(
    peer: IpAddr,
    forwarded_for: impl Iterator<Item = &'a str>,
    trusted: &[IpAddr],
) -> IpAddr {
    if !trusted.contains(&peer) {
        return peer;
    }
    forwarded_for
        .flat_map(|value| value.split(','))
        .last()
        .and_then(|hop| hop.trim().parse().ok())
        .unwrap_or(peer)
}

/// The client address of `req`, found once and kept in its extensions.
pub fn of_request(req: &ServiceRequest, trusted: &[IpAddr]) -> IpAddr {
    if let Some(ClientAddr(known)) = req.extensions().get::<ClientAddr>() {
        return *known;
    }
    let peer = req
        .peer_addr()
        .map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
    let forwarded = req
        .headers()
        .get_all("x-forwarded-for")
        .filter_map(|value| value.to_str().ok());
    let client = client_address(peer, forwarded, trusted);
    req.extensions_mut().insert(ClientAddr(client));
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn only_a_trusted_peer_names_the_client_with_its_last_hop() {
        let trusted = [ip("127.0.0.1"), ip("::1")];
        let hops = ["198.51.100.9, 203.0.113.5", "192.0.2.1"];
        assert_eq!(
            client_address(ip("127.0.0.1"), hops.into_iter(), &trusted),
            ip("192.0.2.1")
        );
        assert_eq!(
            client_address(ip("203.0.113.7"), hops.into_iter(), &trusted),
            ip("203.0.113.7"),
            "an untrusted peer cannot pose as another client"
        );
        assert_eq!(
            client_address(ip("::1"), ["junk"].into_iter(), &trusted),
            ip("::1")
        );
        assert_eq!(
            client_address(ip("127.0.0.1"), std::iter::empty(), &trusted),
            ip("127.0.0.1")
        );
    }
}
