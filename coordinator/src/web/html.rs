//! HTML by hand: a page frame, escaping, and the few formats the pages share. Everything that
//! came from a request, a job spec or a worker goes through [`Esc`] (job names, reasons, worker
//! names are user or worker input).

use std::fmt::{self, Display, Write};

/// Text escaped for HTML element content and quoted attribute values.
pub struct Esc<'a>(pub &'a str);

impl Display for Esc<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '&' => f.write_str("&amp;")?,
                '<' => f.write_str("&lt;")?,
                '>' => f.write_str("&gt;")?,
                '"' => f.write_str("&quot;")?,
                '\'' => f.write_str("&#39;")?,
                // Kept out: an SSE data line must not hold a carriage return.
                '\r' => {}
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `s` as one URL path segment: anything but letters, digits and `-_.` percent-encoded.
pub fn url_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// A short digest of a live fragment: the page marks each live element with the digest of what
/// it holds (`data-v`), events carry the digest of what they bring, and the page skips events
/// that bring what it has. Without it the first event after a load re-created every live part
/// of the page, and a button about to be clicked could vanish under the pointer.
pub fn version(fragment: &str) -> String {
    use sha2::{Digest, Sha256};
    proto::params::hex(&Sha256::digest(fragment.as_bytes())[..8])
}

/// ` id="ID" data-v="..."`: the attributes of a live element holding `fragment`.
pub fn live(id: &str, fragment: &str) -> String {
    format!(" id=\"{id}\" data-v=\"{}\"", version(fragment))
}

/// Which page of the top navigation is open.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Nav {
    Jobs,
    Workers,
    None,
}

/// Who the page is for, for the header: their name, and whether they can sign out.
pub struct Who<'a> {
    pub name: &'a str,
    pub signed_in: bool,
    pub form_token: &'a str,
}

/// A whole page. `events`: the Server-Sent Events address that keeps it live.
pub fn page(title: &str, nav: Nav, who: Option<&Who>, events: Option<&str>, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · gramzoom</title><link rel=\"stylesheet\" href=\"/static/app.css\">\
         <script src=\"/static/app.js\" defer></script></head><body>\
         <header class=\"top\"><a class=\"brand\" href=\"/jobs\">gramzoom</a><nav aria-label=\"main\">",
        Esc(title)
    );
    for (item, href, label) in [(Nav::Jobs, "/jobs", "Jobs"), (Nav::Workers, "/workers", "Workers")] {
        let current = if item == nav { " aria-current=\"page\"" } else { "" };
        let _ = write!(out, "<a href=\"{href}\"{current}>{label}</a>");
    }
    out.push_str("</nav>");
    if let Some(who) = who {
        let _ =
            write!(out, "<span class=\"who\">{}</span>", Esc(if who.name.is_empty() { "open farm" } else { who.name }));
        if who.signed_in {
            let _ = write!(
                out,
                "<form method=\"post\" action=\"/logout\" class=\"inline\"><input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\" class=\"link\">Sign out</button></form>",
                Esc(who.form_token)
            );
        }
    }
    out.push_str("</header><main");
    if let Some(events) = events {
        let _ = write!(out, " data-events=\"{}\"", Esc(events));
    }
    let _ = writeln!(out, ">{body}</main></body></html>");
    out
}

/// A page that only says something (an error, a refusal).
pub fn message_page(title: &str, message: &str) -> axum::response::Html<String> {
    let body = format!(
        "<h1>{}</h1><p class=\"message\">{}</p><p><a href=\"/jobs\">Back to the jobs</a></p>",
        Esc(title),
        Esc(message)
    );
    axum::response::Html(page(title, Nav::None, None, None, &body))
}

/// "45 s", "12 min", "3 h 05 min", "2 d 4 h".
pub fn duration(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// How long ago `then` was, at `now`; "never" for 0.
pub fn ago(now: i64, then: i64) -> String {
    if then <= 0 {
        return "never".into();
    }
    format!("{} ago", duration(now - then))
}

/// 1.5 MB, 240 kB, 12 B (decimal units, as disks are sold).
pub fn bytes(n: u64) -> String {
    match n {
        0..1000 => format!("{n} B"),
        1000..1_000_000 => format!("{:.0} kB", n as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        _ => format!("{:.2} GB", n as f64 / 1e9),
    }
}

/// A state as a labelled badge; the class gives its colour, the text says it (never colour alone).
pub fn badge(state: &str) -> String {
    format!("<span class=\"badge s-{0}\">{0}</span>", Esc(state))
}

/// A progress bar that keeps its size whatever the numbers (no layout jumps as it fills), and
/// the numbers beside it.
pub fn progress(done: u32, total: u32, label: &str) -> String {
    format!(
        "<span class=\"prog\"><progress max=\"{}\" value=\"{}\" aria-label=\"{}\"></progress>\
         <span class=\"num\">{done} / {total}</span></span>",
        total.max(1),
        done.min(total),
        Esc(label)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_from_users_is_escaped_and_formats_read_well() {
        let evil = "<script>alert('x')</script>&\"\r";
        assert_eq!(Esc(evil).to_string(), "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;");
        assert_eq!(url_segment("job-7"), "job-7");
        assert_eq!(url_segment("a/../b c"), "a%2F..%2Fb%20c");
        assert_eq!(duration(45_400), "45 s");
        assert_eq!(duration(125_000), "2 min 05 s");
        assert_eq!(duration(3_900_000), "1 h 05 min");
        assert_eq!(ago(10_000, 0), "never");
        assert_eq!(bytes(74_700_000), "74.7 MB");
        assert!(progress(3, 12, "frames").contains("max=\"12\" value=\"3\""));
        assert!(progress(0, 0, "frames").contains("max=\"1\" value=\"0\""));
    }
}
