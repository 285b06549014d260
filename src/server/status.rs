//! `GET /`: the status page, a small HTML page refreshing itself every 2 s
//! (no JavaScript, no external assets): a chart of the last 10 minutes,
//! one section per service with its instances, and the last removals.
//! Everything a client sent (addresses, metadata) is HTML-escaped.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::registry::{EntryInfo, Lately, REMOVALS_KEPT, Registry, Removal, Second};

/// Rows shown per service; a service with more says how many are left out,
/// so a registry of 100 000 entries still answers a page a browser opens.
const MAX_ROWS: usize = 1000;
/// An entry with at most this share of its TTL left is marked.
const NEAR_EXPIRY_PERCENT: u128 = 20;

/// The status page: every service and instance, refreshing itself.
pub(crate) fn status_page(reg: &Registry, url: &str) -> String {
    let services: Vec<(String, u64, Vec<EntryInfo>)> = reg
        .services()
        .into_iter()
        .map(|name| {
            let (index, entries) = reg.instances(&name);
            (name, index, entries)
        })
        .collect();
    let lately = reg.lately();
    let instances: usize = services.iter().map(|s| s.2.len()).sum();
    let mut out = String::with_capacity(16 * 1024 + instances * 256);
    let _ = write!(
        out,
        "<!doctype html>
<html lang=\"en\"><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">
<title>regcenter</title>
<style>{STYLE}</style>
</head><body>
<h1>regcenter</h1>
<p class=\"summary\">{} {} at <code>{}</code>: {}, {}, at {}. This page refreshes every 2 s; \
rows marked <span class=\"mark\">expiring</span> have less than {NEAR_EXPIRY_PERCENT}% of their TTL left.</p>
",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_PKG_VERSION"),
        html(url),
        plural(services.len(), "service"),
        plural(instances, "instance"),
        utc(SystemTime::now()),
    );
    rates(&mut out, &lately);
    if services.is_empty() {
        out.push_str("<p class=\"empty\">No service has an alive instance.</p>\n");
    }
    for (name, index, entries) in &services {
        service(&mut out, name, *index, entries);
    }
    history(&mut out, &lately);
    out.push_str("</body></html>\n");
    out
}

const STYLE: &str = "\
body{font:14px system-ui,sans-serif;margin:1.5em 2em;color:#222}\
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.4em 0 .4em}\
h2 small{font-weight:normal;color:#666;margin-left:.6em}\
table{border-collapse:collapse}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}\
th{background:#f2f2f2;font-weight:600}td.num{text-align:right}\
.addr,code{font-family:ui-monospace,monospace}\
.kv{white-space:nowrap;display:inline-block;background:#eef3fb;border-radius:3px;padding:0 4px;margin:1px 4px 1px 0}\
td{white-space:nowrap}td.meta{white-space:normal}\
tr.near{background:#fff4d6}.mark{background:#f0a500;color:#fff;border-radius:3px;padding:0 4px;font-size:.85em}\
.status{color:#1a7f37}\
#rates{display:flex;gap:1.5em;flex-wrap:wrap}#rates h2{width:100%;margin-bottom:0}\
figure{margin:0}figcaption{font-size:.9em;color:#444}\
svg.rate{border:1px solid #ddd;background:#fcfcfc;display:block}\
.axis{font-size:.8em;color:#777;display:flex;justify-content:space-between;width:302px}\
";

/// A series of the chart: its name, its colour, and what it counts.
type Series = (&'static str, &'static str, fn(&Second) -> u32);

/// The per-second chart: one small inline SVG per series, each on its own
/// scale (renewals run far above the rest).
fn rates(out: &mut String, lately: &Lately) {
    out.push_str("<section id=\"rates\"><h2>Last 10 minutes, per second</h2>\n");
    let series: [Series; 3] = [
        ("registrations", "#2f6fde", |s| s.registrations),
        ("renewals", "#1a7f37", |s| s.renewals),
        ("expiries", "#c0392b", |s| s.expiries),
    ];
    for (name, color, value) in series {
        let values: Vec<u32> = lately.seconds.iter().map(value).collect();
        let peak = values.iter().copied().max().unwrap_or(0);
        let total: u64 = values.iter().map(|v| u64::from(*v)).sum();
        let (w, h) = (300.0, 48.0);
        let scale = f64::from(peak.max(1));
        let step = w / (values.len().max(2) - 1) as f64;
        let mut points = String::with_capacity(values.len() * 10);
        for (i, v) in values.iter().enumerate() {
            let x = i as f64 * step;
            let y = h - 2.0 - f64::from(*v) / scale * (h - 4.0);
            let _ = write!(points, "{x:.1},{y:.1} ");
        }
        let _ = writeln!(
            out,
            "<figure><figcaption>{name}: peak {peak}/s, {total} in 10 min</figcaption>\
<svg class=\"rate\" id=\"rate-{name}\" width=\"302\" height=\"50\" viewBox=\"-1 -1 302 50\" \
role=\"img\" aria-label=\"{name} per second over the last 10 minutes, peak {peak}\">\
<line x1=\"0\" y1=\"{base}\" x2=\"{w}\" y2=\"{base}\" stroke=\"#ccc\"/>\
<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.2\" points=\"{}\"/></svg>\
<div class=\"axis\"><span>10 min ago</span><span>now</span></div></figure>",
            points.trim_end(),
            base = h - 2.0,
        );
    }
    out.push_str("</section>\n");
}

fn service(out: &mut String, name: &str, index: u64, entries: &[EntryInfo]) {
    let (id, title) = if name.is_empty() {
        ("default-service".to_string(), "(default)".to_string())
    } else {
        (format!("service-{name}"), html(name))
    };
    // Service names are `A-Z a-z 0-9 . _ -`: fit for an id as they are.
    let _ = write!(
        out,
        "<section class=\"service\" id=\"{id}\"><h2>{title}<small>{} · index {index}</small></h2>
<table class=\"instances\"><thead><tr><th>address</th><th>status</th><th>weight</th>\
<th>metadata</th><th>last heartbeat</th><th>expires in</th></tr></thead><tbody>
",
        plural(entries.len(), "instance"),
    );
    for e in entries.iter().take(MAX_ROWS) {
        let near = e
            .expires_in
            .is_some_and(|left| left.as_nanos() * 100 <= e.ttl.as_nanos() * NEAR_EXPIRY_PERCENT);
        let expires = match e.expires_in {
            None => "never".to_string(),
            Some(left) if near => format!("{} <span class=\"mark\">expiring</span>", human(left)),
            Some(left) => human(left),
        };
        let mut meta = String::new();
        for (k, v) in &e.meta {
            let _ = write!(meta, "<span class=\"kv\">{}={}</span>", html(k), html(v));
        }
        let _ = writeln!(
            out,
            "<tr{}><td class=\"addr\">{}</td><td class=\"status\">{}</td><td>{}</td>\
<td class=\"meta\">{meta}</td><td>{}</td><td>{expires}</td></tr>",
            if near { " class=\"near\"" } else { "" },
            html(&e.addr),
            status_of(e),
            e.weight,
            human(e.since_beat),
        );
    }
    if entries.len() > MAX_ROWS {
        let _ = writeln!(
            out,
            "<tr><td colspan=\"6\">… and {} more, not shown</td></tr>",
            entries.len() - MAX_ROWS
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// An entry's status as the page shows it: `up` or `draining`.
fn status_of(entry: &EntryInfo) -> &'static str {
    entry.status.as_str()
}

fn history(out: &mut String, lately: &Lately) {
    let _ = writeln!(
        out,
        "<section id=\"history\"><h2>Last {} expiries and deregistrations</h2>",
        REMOVALS_KEPT
    );
    if lately.removals.is_empty() {
        out.push_str("<p class=\"empty\">None yet.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>when</th><th>at</th><th>what</th><th>service</th><th>address</th></tr></thead><tbody>\n",
    );
    let now = SystemTime::now();
    for r in &lately.removals {
        let what = match r.why {
            Removal::Expired => "expired",
            Removal::Deregistered => "deregistered",
        };
        let service = if r.service.is_empty() {
            "(default)".to_string()
        } else {
            html(&r.service)
        };
        let _ = writeln!(
            out,
            "<tr><td>{} ago</td><td>{}</td><td>{what}</td><td>{service}</td><td class=\"addr\">{}</td></tr>",
            human(r.ago),
            now.checked_sub(r.ago).map_or_else(String::new, utc),
            html(&r.addr),
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// `1 service`, `3 services`.
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A duration in the largest unit that keeps it short, rounded down:
/// `350 ms`, `12 s`, `59 min`, `2 h 5 min`, `3 d 4 h`.
fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => format!("{} ms", d.subsec_millis()),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        3600..86400 => match (s / 3600, s % 3600 / 60) {
            (h, 0) => format!("{h} h"),
            (h, m) => format!("{h} h {m} min"),
        },
        _ => match (s / 86400, s % 86400 / 3600) {
            (days, 0) => format!("{days} d"),
            (days, h) => format!("{days} d {h} h"),
        },
    }
}

/// `2026-12-02 00:31:05 UTC`, by `civil_from_days` from Howard Hinnant's
/// "chrono-Compatible Low-Level Date Algorithms".
fn utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86400, secs % 86400);
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_in_human_units() {
        let s = Duration::from_secs;
        assert_eq!(human(Duration::from_millis(350)), "350 ms");
        assert_eq!(human(s(12)), "12 s");
        assert_eq!(human(Duration::from_millis(3_596_900)), "59 min");
        assert_eq!(human(s(3600)), "1 h");
        assert_eq!(human(s(7500)), "2 h 5 min");
        assert_eq!(human(s(3 * 86400 + 4 * 3600 + 5)), "3 d 4 h");
    }

    #[test]
    fn utc_times_follow_the_calendar() {
        let at = |secs| utc(UNIX_EPOCH + Duration::from_secs(secs));
        assert_eq!(at(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(at(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(at(1_798_761_065), "2026-12-31 23:51:05 UTC");
    }
}
