//! `GET /`: the status page, a small HTML page refreshing itself every 2 s
//! (no JavaScript, no external assets).

use std::fmt::Write as _;

use crate::registry::Registry;

/// The status page: every service and instance, refreshing itself.
pub(crate) fn status_page(reg: &Registry, url: &str) -> String {
    let entries = reg.entries();
    let mut rows = String::new();
    for e in &entries {
        let meta: Vec<String> = e
            .meta
            .iter()
            .map(|(k, v)| format!("{}={}", html(k), html(v)))
            .collect();
        let expires = e
            .expires_in
            .map_or("never".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
        let service = if e.service.is_empty() {
            "(default)".to_string()
        } else {
            html(&e.service)
        };
        let _ = write!(
            rows,
            "<tr><td>{service}</td><td class=addr>{}</td><td>{}</td><td>{}</td><td>{:.1} s</td><td>{expires}</td></tr>",
            html(&e.addr),
            e.weight,
            meta.join(" "),
            e.since_beat.as_secs_f64(),
        );
    }
    let services = reg.service_sizes().len();
    format!(
        "<!doctype html>
<html lang=en><head><meta charset=utf-8><meta http-equiv=refresh content=2>
<title>regcenter</title>
<style>body{{font:14px system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}th{{background:#eee}}.addr{{font-family:monospace}}</style>
</head><body>
<h1>regcenter</h1>
<p>{} at <code>{}</code>: {} services, {} instances. This page refreshes every 2 s.</p>
<table id=instances><tr><th>service</th><th>address</th><th>weight</th><th>metadata</th><th>since last heartbeat</th><th>expires in</th></tr>
{rows}</table>
</body></html>
",
        env!("CARGO_PKG_NAME"),
        html(url),
        services,
        entries.len()
    )
}

fn html(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
