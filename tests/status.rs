//! The status page at `/`: one section per service, human times, entries
//! near expiry marked, the last removals, a chart of the last 10 minutes;
//! read as HTML and as headless Chromium renders it.

use std::time::Duration;

use regcenter::{ManualClock, PutOptions, RegistryServer};

use crate::common::raw;

const S: Duration = Duration::from_secs(1);

/// A registry on 127.0.0.1 whose clock the test moves.
fn on_a_manual_clock() -> (RegistryServer, ManualClock) {
    let clock = ManualClock::new();
    let s = RegistryServer::builder()
        .addr("127.0.0.1:0")
        .threads(2)
        .clock(clock.clone())
        .start()
        .unwrap();
    (s, clock)
}

/// Three services with metadata, an entry near expiry, an expiry and a
/// deregistration in the history, on a clock the test moves.
fn populated() -> (RegistryServer, ManualClock) {
    let (s, clock) = on_a_manual_clock();
    let reg = s.registry();
    let hour = PutOptions::new().ttl(3600 * S);
    let minute = PutOptions::new().ttl(60 * S);
    reg.put_with("", "tcp@10.0.0.1:7001", &hour).unwrap();
    let near = minute
        .clone()
        .weight(7)
        .meta("version", "1.2")
        .meta("zone", "eu-west-1");
    reg.put_with("arith", "tcp@10.0.0.2:7001", &near).unwrap();
    let hostile = hour.clone().meta("note", "<b>bold</b> & \"quoted\"");
    reg.put_with("arith", "tcp@10.0.0.3:7001", &hostile)
        .unwrap();
    reg.put_with("arith", "tcp@10.0.0.8:7001", &hour).unwrap();
    reg.put_with("echo", "unix@/run/<i>echo</i>.sock", &hour)
        .unwrap();
    reg.put_with("echo", "tcp@10.0.0.5:7001", &minute).unwrap();
    reg.put_with("echo", "tcp@10.0.0.9:7001", &PutOptions::new().ttl(5 * S))
        .unwrap();
    clock.advance(5 * S);
    reg.sweep(); // tcp@10.0.0.9:7001 expires
    assert!(reg.remove("arith", "tcp@10.0.0.8:7001").unwrap());
    clock.advance(45 * S);
    // Renewed: far from expiry again, unlike arith's tcp@10.0.0.2:7001,
    // which has 10 s of its 60 s left.
    reg.put_with("echo", "tcp@10.0.0.5:7001", &minute).unwrap();
    (s, clock)
}

fn page(s: &RegistryServer) -> String {
    let r = raw(s.local_addr(), "GET", "/", &[]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("text/html; charset=utf-8"));
    r.text()
}

/// The part of `html` from `start` to the next `end`.
fn between<'a>(html: &'a str, start: &str, end: &str) -> &'a str {
    let from = html
        .find(start)
        .unwrap_or_else(|| panic!("no {start:?} in {html}"));
    let rest = &html[from..];
    &rest[..rest.find(end).unwrap_or(rest.len())]
}

#[test]
fn the_status_page_has_a_section_per_service_with_human_times() {
    let (s, _clock) = populated();
    let html = page(&s);
    let index = s.registry().index("arith");
    let arith = between(
        &html,
        "<section class=\"service\" id=\"service-arith\">",
        "</section>",
    );
    assert!(arith.contains("arith"), "{arith}");
    assert!(arith.contains("2 instances"), "{arith}");
    assert!(arith.contains(&format!("index {index}")), "{arith}");
    let default = between(
        &html,
        "<section class=\"service\" id=\"default-service\">",
        "</section>",
    );
    assert!(
        default.contains("(default)") && default.contains("1 instance"),
        "{default}"
    );
    let echo = between(
        &html,
        "<section class=\"service\" id=\"service-echo\">",
        "</section>",
    );
    // Sorted by address, with weight, metadata, status, times.
    let (a2, a3) = (
        arith.find("tcp@10.0.0.2:7001").unwrap(),
        arith.find("tcp@10.0.0.3:7001").unwrap(),
    );
    assert!(a2 < a3, "sorted: {arith}");
    assert!(arith.contains("<td>7</td>"), "{arith}");
    assert!(
        arith.contains("<span class=\"kv\">version=1.2</span>")
            && arith.contains("<span class=\"kv\">zone=eu-west-1</span>"),
        "{arith}"
    );
    assert!(arith.contains("<td class=\"status\">up</td>"), "{arith}");
    assert!(
        html.contains("white-space:nowrap"),
        "metadata does not wrap"
    );
    // Human units: 50 s since the last beat, 59 min (not 3550.0 s) left.
    let row3 = row_of(arith, "tcp@10.0.0.3:7001");
    assert!(row3.contains("<td>50 s</td>"), "{row3}");
    assert!(row3.contains("<td>59 min</td>"), "{row3}");
    let seconds = regex_free_decimal_seconds(&html);
    assert!(seconds.is_empty(), "decimal seconds left: {seconds:?}");
    // Within 20% of its TTL: marked; the renewed one is not.
    let row2 = row_of(arith, "tcp@10.0.0.2:7001");
    assert!(row2.starts_with("<tr class=\"near\""), "{row2}");
    assert!(
        row2.contains("<td>10 s <span class=\"mark\">expiring</span></td>"),
        "{row2}"
    );
    assert!(!row3.contains("near"), "{row3}");
    assert!(!echo.contains("class=\"near\""), "{echo}");
    // Everything from clients is escaped.
    assert!(
        arith.contains("note=&lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot;"),
        "{arith}"
    );
    assert!(
        echo.contains("unix@/run/&lt;i&gt;echo&lt;/i&gt;.sock"),
        "{echo}"
    );
    assert!(!html.contains("<b>bold") && !html.contains("<i>echo"));

    // The history: the expiry and the deregistration, newest first.
    let history = between(&html, "<section id=\"history\">", "</section>");
    let dereg = history
        .find("tcp@10.0.0.8:7001")
        .expect("the deregistration");
    let expiry = history.find("tcp@10.0.0.9:7001").expect("the expiry");
    assert!(dereg < expiry, "newest first: {history}");
    let dereg = row_of(history, "tcp@10.0.0.8:7001");
    assert!(
        dereg.contains("<td>deregistered</td><td>arith</td>"),
        "{dereg}"
    );
    assert!(dereg.contains("<td>45 s ago</td>"), "{dereg}");
    let expiry = row_of(history, "tcp@10.0.0.9:7001");
    assert!(expiry.contains("<td>expired</td><td>echo</td>"), "{expiry}");
    assert!(expiry.contains("<td>45 s ago</td>"), "{expiry}");

    // The chart: one inline SVG series each, no script, no assets.
    let chart = between(&html, "<section id=\"rates\">", "</section>");
    for series in ["registrations", "renewals", "expiries"] {
        assert!(
            chart.contains(&format!("<svg class=\"rate\" id=\"rate-{series}\"")),
            "{series}: {chart}"
        );
    }
    assert!(chart.contains("<polyline"), "{chart}");
    for caption in [
        "registrations: peak 7/s, 7 in 10 min",
        "renewals: peak 1/s, 1 in 10 min",
        "expiries: peak 1/s, 1 in 10 min",
    ] {
        assert!(chart.contains(caption), "{caption:?} in {chart}");
    }
    assert!(!html.contains("<script"), "no JavaScript");
    assert!(
        !html.contains("src=") && !html.contains("href="),
        "no assets"
    );
}

/// The table row of `html` that holds `needle`.
fn row_of<'a>(html: &'a str, needle: &str) -> &'a str {
    let at = html
        .find(needle)
        .unwrap_or_else(|| panic!("no {needle:?} in {html}"));
    let start = html[..at].rfind("<tr").expect("in a row");
    let end = at + html[at..].find("</tr>").expect("a closed row");
    &html[start..end]
}

/// Numbers like `3596.9 s` in the page's text.
fn regex_free_decimal_seconds(html: &str) -> Vec<String> {
    let b = html.as_bytes();
    let mut found = Vec::new();
    for i in 0..b.len().saturating_sub(3) {
        if b[i].is_ascii_digit() && b[i + 1] == b'.' && b[i + 2].is_ascii_digit() {
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if html[j..].starts_with(" s") {
                found.push(html[i.saturating_sub(8)..j + 2].to_string());
            }
        }
    }
    found
}

#[test]
fn the_history_keeps_the_last_50_removals() {
    let (s, _clock) = on_a_manual_clock();
    for i in 1..=60 {
        let addr = format!("tcp@10.0.1.{i}:7001");
        s.registry().put("svc", &addr).unwrap();
        s.registry().remove("svc", &addr).unwrap();
    }
    let html = page(&s);
    let history = between(&html, "<section id=\"history\">", "</section>");
    assert_eq!(history.matches("deregistered").count(), 50, "{history}");
    assert!(history.contains("tcp@10.0.1.60:7001") && history.contains("tcp@10.0.1.11:7001"));
    assert!(
        !history.contains("tcp@10.0.1.10:7001"),
        "the oldest are gone"
    );
}

/// Loads the page in headless Chromium: reads the rendered DOM, and takes
/// a screenshot (at `$REGCENTER_SCREENSHOT`, else in the temp directory).
#[test]
fn the_status_page_renders_sections_history_and_chart_in_chromium() {
    let Some(chromium) =
        crate::common::chromium("the_status_page_renders_sections_history_and_chart_in_chromium")
    else {
        return;
    };
    let (s, _clock) = populated();
    let url = format!("http://{}/", s.local_addr());
    let out = chromium.run(&["--hide-scrollbars", "--dump-dom"], &url);
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    for id in [
        "<section class=\"service\" id=\"default-service\">",
        "<section class=\"service\" id=\"service-arith\">",
        "<section class=\"service\" id=\"service-echo\">",
        "<section id=\"history\">",
        "<svg class=\"rate\" id=\"rate-registrations\"",
        "<svg class=\"rate\" id=\"rate-renewals\"",
        "<svg class=\"rate\" id=\"rate-expiries\"",
    ] {
        assert!(dom.contains(id), "{id:?} not rendered in {dom}");
    }
    let history = between(&dom, "<section id=\"history\">", "</section>");
    assert!(
        history.contains("deregistered") && history.contains("expired"),
        "{history}"
    );
    assert!(dom.contains("<tr class=\"near\""), "{dom}");
    assert!(
        dom.contains("note=&lt;b&gt;bold&lt;/b&gt;"),
        "escaped in the DOM too"
    );

    let shot = std::env::var_os("REGCENTER_SCREENSHOT").map_or_else(
        || std::env::temp_dir().join(format!("regcenter-status-{}.png", std::process::id())),
        std::path::PathBuf::from,
    );
    let _ = std::fs::remove_file(&shot);
    chromium.run(
        &[
            "--hide-scrollbars",
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,900",
        ],
        &url,
    );
    let png = std::fs::read(&shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
