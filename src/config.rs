//! Defaults every role shares (the port plan in README's table, the lease TTL) and small
//! helpers to bind and announce a listener.
//!
//! Each binary's own `Config` struct lives with its crate; this module holds only what is
//! common. Every default can be overridden by a flag or a `CONCORD_*` environment variable
//! in the `concord` CLI.

use std::{net::SocketAddr, time::Duration};

use tokio::net::TcpListener;

/// Default registry address.
pub const DEFAULT_REGISTRY_ADDR: &str = "127.0.0.1:50050";
/// Default aggregator address.
pub const DEFAULT_AGGREGATOR_ADDR: &str = "127.0.0.1:50051";
/// Port of the first prediction node; node N listens on this + N - 1.
pub const DEFAULT_FIRST_NODE_PORT: u16 = 50052;
/// Default shop primary address.
pub const DEFAULT_SHOP_PRIMARY_ADDR: &str = "127.0.0.1:50060";
/// Default shop replica address.
pub const DEFAULT_SHOP_REPLICA_ADDR: &str = "127.0.0.1:50061";
/// Default web gateway address.
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:8080";

/// Lease TTL services register with by default: failover notices a dead primary within it.
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(2);

/// Parses a duration flag: anything `humantime` reads (`250ms`, `3s`, `2m`, `1h 30m`),
/// and a bare number as seconds (`7`), as the flags have always taken it.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let parsed = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        text.parse()
            .map(Duration::from_secs)
            .map_err(|e| e.to_string())
    } else {
        humantime::parse_duration(text).map_err(|e| e.to_string())
    };
    parsed.map_err(|why| format!("{text:?} is not a duration like 250ms, 3s or 2m: {why}"))
}

/// Binds a TCP listener; port 0 picks a free port (read it back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// The line a server process prints on stdout once bound; the launcher and tests parse it.
pub fn listening_line(role: &str, addr: SocketAddr) -> String {
    format!("concord {role} listening on {addr}")
}

/// Parses the address out of a [`listening_line`].
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix("concord ")?
        .split_once(" listening on ")?
        .1
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Duration flags: every form they took before (units ms/s/m, a bare number as
    /// seconds, surrounding spaces), humantime's longer forms, and refusals.
    #[test]
    fn parse_duration_table() {
        let cases: &[(&str, Option<Duration>)] = &[
            ("250ms", Some(Duration::from_millis(250))),
            ("3s", Some(Duration::from_secs(3))),
            ("2m", Some(Duration::from_secs(120))),
            ("720m", Some(Duration::from_secs(720 * 60))),
            ("7", Some(Duration::from_secs(7))),
            (" 5s ", Some(Duration::from_secs(5))),
            ("1h", Some(Duration::from_secs(3600))),
            ("1m 30s", Some(Duration::from_secs(90))),
            ("s", None),
            ("-1s", None),
            ("", None),
            ("5 parsecs", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_duration(text).ok(), *want, "{text:?}");
        }
    }

    /// The announcement line round-trips through the parser.
    #[test]
    fn listening_line_round_trip() {
        let addr: SocketAddr = "127.0.0.1:4242".parse().expect("addr");
        assert_eq!(
            parse_listening_line(&listening_line("registry", addr)),
            Some(addr)
        );
        assert_eq!(parse_listening_line("something else"), None);
    }
}
