//! Text from elsewhere made safe to show: device-written strings for a
//! terminal, URLs without their credentials.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Whether `c` changes what a terminal shows rather than being shown: C0
/// and C1 controls (escape sequences, cursor moves, bell), DEL, and the
/// Unicode format characters that reorder or hide text (bidirectional
/// overrides and isolates, zero-width marks).
fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}'
            | '\u{feff}')
}

/// `s` for a terminal: every control character escaped (`\x1b`,
/// `\u{202e}`; a backslash doubled only when something was escaped, so
/// plain text stays as it is). A device that writes an escape sequence
/// into its status cannot move the cursor, erase rows or retitle the
/// admin's window.
pub fn terminal(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_control) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if is_control(c) && (c as u32) < 0x100 => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if is_control(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `url` with the password of its user information replaced by `***`
/// (`mqtt://admin:***@broker`), for errors and logs. Anything that does
/// not look like a URL with credentials is returned as it is.
pub fn url_without_secrets(url: &str) -> Cow<'_, str> {
    let Some(scheme_end) = url.find("://") else {
        return Cow::Borrowed(url);
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return Cow::Borrowed(url);
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:***"),
        None => "***".to_owned(),
    };
    Cow::Owned(format!("{}{user}{}", &url[..authority_start], &rest[at..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_sequences_are_shown_not_obeyed() {
        assert!(matches!(terminal("gw-1 ok"), Cow::Borrowed(_)));
        assert_eq!(terminal("a\\b"), "a\\b");
        // Cursor up, erase line, set title, conceal, bell, C1 CSI.
        assert_eq!(
            terminal("x\u{1b}[1A\u{1b}[2K\u{1b}]0;t\u{7}\u{1b}[8m\u{9b}2K\\"),
            "x\\x1b[1A\\x1b[2K\\x1b]0;t\\x07\\x1b[8m\\x9b2K\\\\"
        );
        assert_eq!(terminal("a\nb\rc\td"), "a\\x0ab\\x0dc\\x09d");
        assert_eq!(terminal("evil\u{202e}txt.exe"), "evil\\u{202e}txt.exe");
        assert_eq!(terminal("é ü 日本"), "é ü 日本");
    }

    #[test]
    fn passwords_leave_urls() {
        assert_eq!(
            url_without_secrets("mqtt://admin:hunter2@broker:1883"),
            "mqtt://admin:***@broker:1883"
        );
        assert_eq!(
            url_without_secrets("https://token@h/p?q=a@b"),
            "https://***@h/p?q=a@b"
        );
        assert_eq!(
            url_without_secrets("mqtt://a:b:c@d@host/x"),
            "mqtt://a:***@host/x"
        );
        assert!(matches!(
            url_without_secrets("mqtts://broker:8883"),
            Cow::Borrowed(_)
        ));
        assert_eq!(url_without_secrets("not a url @ all"), "not a url @ all");
    }
}
