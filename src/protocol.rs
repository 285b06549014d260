//! Wire names, validation and codecs of protocol v1 (see docs/PROTOCOL.md).

use std::fmt::Write as _;
use std::time::Duration;

use crate::error::{Error, Result};

/// The base path the GeeRPC seed serves its registry on.
pub const DEFAULT_PATH: &str = "/myRPC/registry";
/// The registry URL clients use when none is given.
pub const DEFAULT_REGISTRY_URL: &str = "http://127.0.0.1:9999/myRPC/registry";
/// The seed's address header: on POST and DELETE the server's address, on
/// GET the comma-joined alive list.
pub const HEADER_SERVER: &str = "X-Myrpc-Server";
/// The seed's listing header on GET answers.
pub const HEADER_SERVERS: &str = "X-Myrpc-Servers";
/// The service's modify index on every list and register answer.
pub const HEADER_INDEX: &str = "X-Myrpc-Index";
/// The TTL asked for on POST, and the TTL in force in its answer.
pub const HEADER_TTL: &str = "X-Myrpc-Ttl";
/// A server's weight on POST (1 to 10 000).
pub const HEADER_WEIGHT: &str = "X-Myrpc-Weight";
/// A server's metadata on POST (`k=v&k2=v2`, URL-encoded).
pub const HEADER_META: &str = "X-Myrpc-Meta";
/// A server's status on POST (`up` or `draining`; sticky: a POST without it
/// keeps the status in force), and in JSON listings as `"status"`.
pub const HEADER_STATUS: &str = "X-Myrpc-Status";
/// The port of the registry's UDP renewals, on POST answers of a registry
/// that takes them (the README's "UDP renewals").
pub const HEADER_UDP: &str = "X-Myrpc-Udp";
/// `true` on listings of a registry that started without a snapshot and has
/// not yet waited its maximum TTL: servers may still be re-registering.
pub const HEADER_RECOVERING: &str = "X-Myrpc-Recovering";
/// On every answer of a front-end on etcd (`serve --etcd`) that cannot
/// reach etcd: `etcd unreachable`. Its listings are the last state it
/// read; it renews what it knows and refuses registrations with 503.
pub const HEADER_DEGRADED: &str = "X-Myrpc-Degraded";
/// Longest accepted value of any `X-Myrpc-*` request header, in bytes.
pub const MAX_HEADER_VALUE: usize = 1024;

/// Longest accepted server address in bytes.
pub const MAX_ADDR_LEN: usize = 255;
/// Longest accepted service name in characters.
pub const MAX_SERVICE_LEN: usize = 128;

/// Checks a server address: 1–255 bytes of visible ASCII without a comma.
///
/// This is all a DELETE, a restored snapshot and a free-form registry ask;
/// a registry checks registrations with [`validate_dialable_addr`] by
/// default.
///
/// Why so strict: the address is echoed into the `X-Myrpc-Servers` header and
/// into text listings, where a comma, a space or a line break would split or
/// corrupt every listing that carries it.
///
/// # Errors
///
/// [`Error::InvalidAddr`] with the reason.
pub fn validate_addr(addr: &str) -> Result<()> {
    let reason = if addr.is_empty() {
        Some("it is empty")
    } else if addr.len() > MAX_ADDR_LEN {
        Some("it is longer than 255 bytes")
    } else if addr
        .bytes()
        .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
    {
        // One pass for the usual case; the reason is looked for after.
        None
    } else if addr.contains(',') {
        Some("it contains a comma, which separates addresses in listings")
    } else {
        Some("only visible ASCII is allowed (no spaces, control bytes or non-ASCII)")
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidAddr {
            addr: truncate_for_message(addr),
            reason,
        }),
    }
}

/// Protocols whose address after `@` is `host:port`, as Go's `net.Dial`
/// and an HTTP client read it.
pub const HOST_PORT_PROTOCOLS: [&str; 5] = ["tcp", "tcp4", "tcp6", "udp", "http"];

/// Checks that a client can dial a server address, on top of
/// [`validate_addr`]: `proto@rest` with a non-empty protocol and a single
/// `@`, as the seed's clients split it (`strings.Split(addr, "@")`, then
/// `net.Dial(parts[0], parts[1])`). For the protocols of
/// [`HOST_PORT_PROTOCOLS`] `rest` is `host:port`: a port 1–65535, a host
/// that is a name (`A-Z a-z 0-9 - . _`), an IPv4 address, or an IPv6
/// address in brackets (`tcp@[::1]:7001`). Other protocols (`unix@/run/app.sock`)
/// keep a free-form, non-empty `rest`.
///
/// A registry applies it to registrations unless it was built with
/// `free_form_addresses`.
///
/// # Errors
///
/// [`Error::InvalidAddr`] with a reason that says which shape is expected.
pub fn validate_dialable_addr(addr: &str) -> Result<()> {
    validate_addr(addr)?;
    match dialable_shape(addr) {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidAddr {
            addr: truncate_for_message(addr),
            reason,
        }),
    }
}

/// Why `addr` (already visible ASCII) is not `proto@rest` as
/// [`validate_dialable_addr`] describes, or `None`.
fn dialable_shape(addr: &str) -> Option<&'static str> {
    const HOST_PORT: &str = "expected host:port after the protocol, such as \
                             tcp@127.0.0.1:7001 or tcp@[::1]:7001";
    let Some((proto, rest)) = addr.split_once('@') else {
        return Some(
            "expected proto@address such as tcp@127.0.0.1:7001 or unix@/run/app.sock \
             (clients split it at @ and dial the protocol and the rest)",
        );
    };
    if proto.is_empty() {
        return Some(
            "the protocol before @ is empty; expected proto@address such as tcp@127.0.0.1:7001",
        );
    }
    if rest.contains('@') {
        return Some(
            "it has a second @; the seed's clients split at every @ and dial only the first two parts",
        );
    }
    if rest.is_empty() {
        return Some("the address after @ is empty; expected e.g. tcp@127.0.0.1:7001");
    }
    if !HOST_PORT_PROTOCOLS.contains(&proto) {
        return None;
    }
    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((ip, port)) = bracketed.split_once("]:") else {
            return Some(HOST_PORT);
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Some("the host in brackets must be an IPv6 address, as in tcp@[::1]:7001");
        }
        (None, port)
    } else {
        let Some((host, port)) = rest.rsplit_once(':') else {
            return Some(HOST_PORT);
        };
        (Some(host), port)
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| (1..=65535).contains(&p));
    if !port_ok {
        return Some("the port must be a number from 1 to 65535, as in tcp@127.0.0.1:7001");
    }
    host.and_then(host_shape)
}

/// Why `host` (before `:port`, not in brackets) is not one a client can
/// dial, or `None`.
fn host_shape(host: &str) -> Option<&'static str> {
    if host.is_empty() {
        return Some("the host before :port is empty; expected e.g. tcp@127.0.0.1:7001");
    }
    if host.contains(':') {
        return Some("an IPv6 host must be in brackets, as in tcp@[::1]:7001");
    }
    let name_ok = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    // Digits and dots only is meant as an IPv4 address, and Go would try
    // `10.0.0.256` as a name and fail.
    let numeric = host.bytes().all(|b| b.is_ascii_digit() || b == b'.');
    if !name_ok || (numeric && host.parse::<std::net::Ipv4Addr>().is_err()) {
        return Some(
            "the host must be a name (A-Z a-z 0-9 - . _), an IPv4 address, or an IPv6 address in brackets",
        );
    }
    None
}

/// Checks a service name: empty (the default service), or 1–128 characters
/// of `A-Z a-z 0-9 . _ -` other than `.` and `..`.
///
/// # Errors
///
/// [`Error::InvalidService`] with the reason.
pub fn validate_service(service: &str) -> Result<()> {
    let reason = if service.len() > MAX_SERVICE_LEN {
        Some("it is longer than 128 characters")
    } else if service == "." || service == ".." {
        Some("`.` and `..` are reserved")
    } else if !service
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        Some("only A-Z a-z 0-9 . _ - are allowed")
    } else {
        None
    };
    match reason {
        None => Ok(()),
        Some(reason) => Err(Error::InvalidService {
            service: truncate_for_message(service),
            reason,
        }),
    }
}

/// Keeps error messages one line and bounded whatever a client sent.
fn truncate_for_message(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// Parses a Go-style duration: a sequence of decimal numbers, each with an
/// optional fraction and a unit (`ns`, `us`, `µs`, `ms`, `s`, `m`, `h`), such
/// as `500ms`, `5s`, `1m30s`, `1.5h`. A bare `0` is zero, as in Go.
///
/// # Errors
///
/// [`Error::InvalidDuration`] for empty or negative input, a missing or
/// unknown unit, or a value above 100 years.
pub fn parse_duration(input: &str) -> Result<Duration> {
    const MAX_NANOS: u128 = 100 * 365 * 24 * 3600 * 1_000_000_000;
    let err = |reason| Error::InvalidDuration {
        input: truncate_for_message(input),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty; write e.g. 5s, 500ms or 1m30s"));
    }
    if s.starts_with('-') {
        return Err(err("durations cannot be negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total: u128 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let whole = &s[start..i];
        let mut frac = "";
        if i < bytes.len() && bytes[i] == b'.' {
            i += 1;
            let fstart = i;
            while i < bytes.len() && bytes[i].is_ascii_digit() {
                i += 1;
            }
            frac = &s[fstart..i];
        }
        if whole.is_empty() && frac.is_empty() {
            return Err(err("expected a number; write e.g. 5s, 500ms or 1m30s"));
        }
        let ustart = i;
        while i < bytes.len() && !bytes[i].is_ascii_digit() && bytes[i] != b'.' {
            i += 1;
        }
        let unit: u128 = match &s[ustart..i] {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            "" => return Err(err("a unit is missing (ns, us, ms, s, m, h)")),
            _ => return Err(err("unknown unit; use ns, us, ms, s, m or h")),
        };
        let too_large = || err("it is larger than 100 years");
        if whole.len() > 30 {
            return Err(too_large());
        }
        let w: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| too_large())?
        };
        let mut nanos = w.checked_mul(unit).ok_or_else(too_large)?;
        // The fraction is scaled digit by digit so that 1.5h is exact and a
        // long fraction cannot overflow.
        let mut scale = unit;
        for d in frac.bytes().take(30) {
            scale /= 10;
            nanos += u128::from(d - b'0') * scale;
        }
        total = total.checked_add(nanos).ok_or_else(too_large)?;
        if total > MAX_NANOS {
            return Err(too_large());
        }
    }
    let secs = (total / 1_000_000_000) as u64;
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration::new(secs, sub))
}

/// Formats a duration the way Go's `time.Duration.String` does, with `us`
/// for microseconds so that the text stays ASCII for HTTP headers:
/// `0s`, `250ms`, `5s`, `1m30s`, `1h0m0s`, `1.5s`.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    if nanos < 1_000_000_000 {
        let (unit, div) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("us", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        push_fraction(&mut out, nanos, div);
        out.push_str(unit);
        return out;
    }
    let total_secs = d.as_secs();
    let (h, m) = (total_secs / 3600, (total_secs / 60) % 60);
    if h > 0 {
        let _ = write!(out, "{h}h");
    }
    if h > 0 || m > 0 {
        let _ = write!(out, "{m}m");
    }
    let secs_nanos = u128::from(total_secs % 60) * 1_000_000_000 + u128::from(d.subsec_nanos());
    push_fraction(&mut out, secs_nanos, 1_000_000_000);
    out.push('s');
    out
}

fn push_fraction(out: &mut String, value: u128, div: u128) {
    let _ = write!(out, "{}", value / div);
    let rem = value % div;
    if rem != 0 {
        let width = div.ilog10() as usize;
        let digits = format!("{rem:0width$}");
        let _ = write!(out, ".{}", digits.trim_end_matches('0'));
    }
}

/// Splits the seed's comma-joined list, trimming spaces and skipping empty
/// items, as the seed's Go client does.
pub fn split_servers(header: &str) -> Vec<String> {
    header
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Builds the registry URL of a service: the base URL for the default
/// service, `base/service` otherwise.
///
/// # Errors
///
/// [`Error::InvalidService`] when the name is invalid.
pub fn service_url(registry: &str, service: &str) -> Result<String> {
    validate_service(service)?;
    let base = registry.trim_end_matches('/');
    Ok(if service.is_empty() {
        base.to_string()
    } else {
        format!("{base}/{service}")
    })
}

/// Parses `k=v&k2=v2` with URL-query decoding (`%XX`, `+` as space).
pub(crate) fn parse_meta(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode(k)?;
        if k.is_empty() {
            return Err("a key is empty; write k=v&k2=v2".into());
        }
        out.push((k, percent_decode(v)?));
    }
    Ok(out)
}

/// Reads one `meta.KEY=VALUE` parameter of a listing's query, the filter
/// of docs/PROTOCOL.md ("Filters"): KEY and VALUE percent-decoded (`+` is
/// a space, as in `X-Myrpc-Meta`). `None` when `param` is not one.
///
/// # Errors
///
/// A one-line reason when the `=` is missing, KEY is empty, or either
/// does not decode to UTF-8.
pub(crate) fn parse_meta_param(param: &str) -> Option<Result<(String, String), String>> {
    let rest = param.strip_prefix("meta.")?;
    let Some((key, value)) = rest.split_once('=') else {
        return Some(Err(format!(
            "filter {:?} has no value: write meta.KEY=VALUE",
            truncate_for_message(param)
        )));
    };
    Some(match (percent_decode(key), percent_decode(value)) {
        (Ok(key), _) if key.is_empty() => {
            Err("a filter's KEY is empty: write meta.KEY=VALUE".to_string())
        }
        (Ok(key), Ok(value)) => Ok((key, value)),
        (Err(reason), _) | (_, Err(reason)) => Err(format!("invalid filter: {reason}")),
    })
}

fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        format!("bad percent escape in {:?}", truncate_for_message(s))
                    })?;
                out.push(hex);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out)
        .map_err(|_| format!("{:?} does not decode to UTF-8", truncate_for_message(s)))
}

/// Encodes metadata as a URL query: `k=v&k2=v2`, reserved bytes as `%XX`.
pub(crate) fn encode_meta(meta: &[(String, String)]) -> String {
    fn enc(s: &str, out: &mut String) {
        for b in s.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    let mut out = String::new();
    for (i, (k, v)) in meta.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        enc(k, &mut out);
        out.push('=');
        enc(v, &mut out);
    }
    out
}

/// Whether `token` may be a bearer token: non-empty visible ASCII, so that
/// it fits a header unchanged. Client and server check the same rule.
pub(crate) fn is_valid_token(token: &str) -> bool {
    !token.is_empty() && token.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_is_url_encoded() {
        let m = vec![
            ("zone".to_string(), "eu west".to_string()),
            ("v".into(), "1&2=3".into()),
        ];
        assert_eq!(encode_meta(&m), "zone=eu%20west&v=1%262%3D3");
    }

    #[test]
    fn addresses_follow_the_visible_ascii_rule() {
        assert!(validate_addr("tcp@127.0.0.1:7001").is_ok());
        assert!(validate_addr("x").is_ok());
        assert!(validate_addr(&"a".repeat(255)).is_ok());
        for bad in [
            "",
            "tcp@a,tcp@b",
            "tcp@a b",
            "tcp@a\nb",
            "tcp@a\rb",
            "a\u{7f}",
            "a\u{0}",
            "é",
            &"a".repeat(256),
        ] {
            let e = validate_addr(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidAddr { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn dialable_addresses_are_proto_at_rest_with_host_port_for_ip_protocols() {
        for ok in [
            "tcp@127.0.0.1:7001",
            "tcp@[::1]:7001",
            "udp@dns.example:53",
            "http@a:65535",
            "tcp@10.0.0.1:07001",
            "unix@/run/app.sock",
            "TCP@free form",
        ] {
            assert_eq!(dialable_shape(ok), None, "{ok:?}");
        }
        for bad in [
            "127.0.0.1:7001",
            "@x",
            "tcp@",
            "unix@",
            "a@b@c",
            "tcp@a",
            "tcp@a:",
            "tcp@a:0",
            "tcp@a:65536",
            "tcp@a:123456",
            "tcp@a:+1",
            "tcp@:1",
            "tcp@::1:1",
            "tcp@[::1]",
            "tcp@[::1]1",
            "tcp@[x]:1",
            "tcp@1.2.3.4.5:1",
            "tcp@a/b:1",
            // A zone (`%eth0`) is not taken: a registry is for addresses
            // other machines dial.
            "tcp6@[fe80::1%eth0]:7001",
        ] {
            assert!(dialable_shape(bad).is_some(), "{bad:?}");
        }
        let e = validate_dialable_addr("127.0.0.1:7006").unwrap_err();
        assert!(e.to_string().contains("proto@address"), "{e}");
        assert!(
            validate_dialable_addr("tcp@a,b:1").is_err(),
            "still visible ASCII"
        );
    }

    #[test]
    fn service_names_follow_the_charset_rule() {
        for ok in ["", "arith", "Arith.v2", "a_b-c", &"s".repeat(128)] {
            assert!(validate_service(ok).is_ok(), "{ok:?}");
        }
        for bad in [
            ".",
            "..",
            "a/b",
            "a b",
            "a%2e",
            "ü",
            &"s".repeat(129),
            "a,b",
        ] {
            assert!(validate_service(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn parses_go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("500ms").unwrap(), ms(500));
        assert_eq!(parse_duration("5s").unwrap(), ms(5000));
        assert_eq!(parse_duration("2m").unwrap(), ms(120_000));
        assert_eq!(parse_duration("1m30s").unwrap(), ms(90_000));
        assert_eq!(parse_duration("1.5h").unwrap(), ms(5_400_000));
        assert_eq!(parse_duration(".5s").unwrap(), ms(500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("0s").unwrap(), Duration::ZERO);
        assert_eq!(parse_duration("10us").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("10µs").unwrap(), Duration::from_micros(10));
        assert_eq!(parse_duration("7ns").unwrap(), Duration::from_nanos(7));
        assert_eq!(parse_duration("1h2m3s4ms").unwrap(), ms(3_723_004));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in [
            "",
            "-5s",
            "5",
            "5x",
            "s",
            "1.2.3s",
            "abc",
            "5 s",
            "99999999999999h",
            "1e9s",
            "876001h",
        ] {
            let e = parse_duration(bad).unwrap_err();
            assert!(matches!(e, Error::InvalidDuration { .. }), "{bad:?}: {e}");
        }
    }

    #[test]
    fn formats_like_go() {
        let f = |ms| format_duration(Duration::from_millis(ms));
        assert_eq!(format_duration(Duration::ZERO), "0s");
        assert_eq!(f(250), "250ms");
        assert_eq!(f(5000), "5s");
        assert_eq!(f(1500), "1.5s");
        assert_eq!(f(90_000), "1m30s");
        assert_eq!(f(120_000), "2m0s");
        assert_eq!(f(3_600_000), "1h0m0s");
        assert_eq!(format_duration(Duration::from_micros(1500)), "1.5ms");
        assert_eq!(format_duration(Duration::from_nanos(12)), "12ns");
    }

    #[test]
    fn format_and_parse_round_trip() {
        for ms in [
            1, 10, 999, 1000, 1001, 59_999, 60_000, 61_500, 3_599_999, 7_200_000,
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(parse_duration(&format_duration(d)).unwrap(), d, "{ms}");
        }
    }

    #[test]
    fn splits_seed_lists_like_the_go_client() {
        assert_eq!(split_servers("a, b,,c "), ["a", "b", "c"]);
        assert!(split_servers("").is_empty());
    }

    #[test]
    fn meta_params_decode_and_refuse_a_missing_value_or_key() {
        let p = parse_meta_param;
        assert_eq!(p("format=json"), None);
        assert_eq!(p("metadata=x"), None);
        assert_eq!(
            p("meta.zone=eu+west"),
            Some(Ok(("zone".into(), "eu west".into())))
        );
        assert_eq!(
            p("meta.a%26b=1%3D2"),
            Some(Ok(("a&b".into(), "1=2".into())))
        );
        assert_eq!(p("meta.v="), Some(Ok(("v".into(), String::new()))));
        for bad in ["meta.zone", "meta.=eu", "meta.", "meta.%zz=1", "meta.k=%ff"] {
            let reason = p(bad).unwrap().unwrap_err();
            assert!(!reason.contains('\n'), "{bad}: {reason}");
        }
    }

    #[test]
    fn service_urls() {
        assert_eq!(service_url("http://h/p/", "").unwrap(), "http://h/p");
        assert_eq!(
            service_url("http://h/p", "arith").unwrap(),
            "http://h/p/arith"
        );
        assert!(service_url("http://h/p", "a/b").is_err());
    }
}

/// Whether a registered server takes new work.
///
/// A draining server stays registered and keeps renewing, but listings for
/// the seed's clients leave it out and no [`SelectMode`](crate::SelectMode)
/// picks it; JSON listings show it with `"status": "draining"`.
///
/// ```
/// use regcenter::Status;
///
/// assert_eq!("draining".parse::<Status>()?, Status::Draining);
/// assert_eq!(Status::Up.as_str(), "up");
/// assert!("sleeping".parse::<Status>().is_err());
/// # Ok::<(), regcenter::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Status {
    /// Takes new work.
    #[default]
    Up,
    /// Registered, but takes no new work.
    Draining,
}

impl Status {
    /// The wire name: `up` or `draining`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Up => "up",
            Status::Draining => "draining",
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = Error;

    /// Parses the wire name, exactly (`up`, `draining`).
    fn from_str(s: &str) -> Result<Status> {
        match s {
            "up" => Ok(Status::Up),
            "draining" => Ok(Status::Draining),
            other => Err(Error::config(
                "status",
                format!("unknown status {other:?}: use up or draining"),
            )),
        }
    }
}
