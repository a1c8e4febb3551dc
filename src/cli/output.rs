//! How the CLI prints for people: aligned tables, relative times, colour on a terminal only.

use std::io::IsTerminal;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// Whether stdout gets colour: a terminal, and `NO_COLOR` unset (no-color.org).
pub fn colour_on() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none()
}

/// Whether stderr is a terminal a progress line can redraw.
pub fn progress_on() -> bool {
    std::io::stderr().is_terminal()
}

/// `text` in the colour a workflow or task status has, when colour is on.
pub fn status(text: &str) -> String {
    let code = match text {
        "succeeded" | "completed" | "active" | "leader" | "yes" => "32",
        "failed" | "UNREACHABLE" | "no" => "31",
        "cancelled" | "withdrawn" | "backoff" => "33",
        "running" | "leased" | "ready" => "36",
        _ => return text.to_string(),
    };
    paint(code, text)
}

/// `text` bold, when colour is on.
pub fn bold(text: &str) -> String {
    paint("1", text)
}

/// `text` dimmed, when colour is on.
pub fn dim(text: &str) -> String {
    paint("2", text)
}

fn paint(code: &str, text: &str) -> String {
    if colour_on() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// The width a cell takes on screen: its characters, less any colour codes.
fn visible_width(cell: &str) -> usize {
    let mut width = 0;
    let mut in_escape = false;
    for c in cell.chars() {
        match (in_escape, c) {
            (false, '\x1b') => in_escape = true,
            (true, 'm') => in_escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

/// Rows under a header, each column as wide as its widest cell, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(visible_width(cell));
            }
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                let pad = widths[i] - visible_width(cell) + 2;
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push('\n');
    };
    line(header.iter().map(|h| bold(h)).collect());
    for row in rows {
        line(row.clone());
    }
    out
}

/// An RFC 3339 time as people say it relative to now: `12s ago`, `in 3m`, `2h ago`.
pub fn relative(at: &str) -> String {
    match OffsetDateTime::parse(at, &Rfc3339) {
        Ok(t) => relative_to(t, OffsetDateTime::now_utc()),
        Err(_) => at.to_string(),
    }
}

fn relative_to(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let secs = (now - t).whole_seconds();
    let (n, future) = (secs.unsigned_abs(), secs < 0);
    let amount = match n {
        0 => return "just now".into(),
        1..=59 => format!("{n}s"),
        60..=3599 => format!("{}m", n / 60),
        3600..=86_399 => format!("{}h", n / 3600),
        _ => format!("{}d", n / 86_400),
    };
    if future {
        format!("in {amount}")
    } else {
        format!("{amount} ago")
    }
}

/// A JSON value on one line, cut to `max` characters.
pub fn short_json(v: &serde_json::Value, max: usize) -> String {
    let s = v.to_string();
    if s.chars().count() <= max {
        s
    } else {
        let cut: String = s.chars().take(max.saturating_sub(1)).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_to_the_widest_cell() {
        let t = table(
            &["ID", "STATE"],
            &[
                vec!["order-1".into(), "paid".into()],
                vec!["o2".into(), "created".into()],
            ],
        );
        assert_eq!(t, "ID       STATE\norder-1  paid\no2       created\n");
    }

    #[test]
    fn colour_codes_take_no_width() {
        assert_eq!(visible_width("\x1b[32msucceeded\x1b[0m"), 9);
    }

    #[test]
    fn times_read_relative_to_now() {
        let now = OffsetDateTime::parse("2026-01-01T12:00:00Z", &Rfc3339).unwrap();
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        assert_eq!(relative_to(at("2026-01-01T11:59:48Z"), now), "12s ago");
        assert_eq!(relative_to(at("2026-01-01T11:57:00Z"), now), "3m ago");
        assert_eq!(relative_to(at("2026-01-01T10:00:00Z"), now), "2h ago");
        assert_eq!(relative_to(at("2025-12-29T12:00:00Z"), now), "3d ago");
        assert_eq!(relative_to(at("2026-01-01T12:00:30Z"), now), "in 30s");
        assert_eq!(relative_to(now, now), "just now");
        assert_eq!(relative("not a time"), "not a time");
    }

    #[test]
    fn long_json_is_cut() {
        let v = serde_json::json!({"a": "0123456789"});
        assert_eq!(short_json(&v, 100), r#"{"a":"0123456789"}"#);
        assert_eq!(short_json(&v, 8), r#"{"a":"0…"#);
    }
}
