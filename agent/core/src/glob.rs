//! Every glob ferry reads, in one place and in linear-times-pattern time:
//!
//! - [`selector`]: device selectors and Sigstore rule paths, `*` any run of
//!   characters, `?` one character;
//! - [`scope`]: `/`-separated paths of git signer scopes, `**` any number of
//!   whole segments, `*` and `?` within one segment;
//! - [`tuf_path`]: TUF's PATHPATTERN (specification §4.5), shell wildcards
//!   `*`, `?`, `[seq]`, `[!seq]` per segment, as many segments as the
//!   target has.
//!
//! The obvious recursive matcher backtracks exponentially on patterns such
//! as `*a*a*a*a*a*a*a*b` (every `*` retries every split); a pattern is
//! data a repository or a fleet admin writes, so that would let one file
//! stall a device. All three dialects have stars that match any run of
//! elements and other tokens that match exactly one element; for those,
//! returning to the most recent star only is complete, so a match costs
//! O(pattern × text) ([`wildmatch`]). `integration/bench` has the figures
//! (`cargo bench -p ferry-core --bench glob`). (`globset` compiles a glob
//! to a regex: linear too, but with a compile step per pattern and neither
//! TUF's segment rule nor its `[!seq]`.)

/// Matches `text` against `pat`: `is_star(p)` tokens match any run of
/// elements (also none), every other token exactly one element for which
/// `one(p, t)` holds.
pub fn wildmatch<P, T>(
    pat: &[P],
    text: &[T],
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut pi, mut ti) = (0, 0);
    // The last star seen, and the text position its run currently ends at.
    let mut star: Option<(usize, usize)> = None;
    while ti < text.len() {
        if pi < pat.len() && is_star(&pat[pi]) {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < pat.len() && one(&pat[pi], &text[ti]) {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star take one more element and retry after it.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pat[pi..].iter().all(is_star)
}

/// A device selector or rule path: `*` any run of characters (also
/// none), `?` exactly one.
pub fn selector(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    wildmatch(&p, &t, |c| *c == '*', |p, t| *p == '?' || p == t)
}

/// A `/`-separated path scope: `**` matches any number of whole segments,
/// `*` any characters but `/`, `?` one character but `/`.
pub fn scope(pattern: &str, path: &str) -> bool {
    let pat: Vec<&str> = pattern.split('/').collect();
    let segs: Vec<&str> = path.split('/').collect();
    wildmatch(
        &pat,
        &segs,
        |p| *p == "**",
        |p, s| {
            wildmatch(
                p.as_bytes(),
                s.as_bytes(),
                |c| *c == b'*',
                |p, c| *p == b'?' || p == c,
            )
        },
    )
}

/// TUF's PATHPATTERN (§4.5): shell-style wildcards per path segment; `*`
/// does not cross a `/`, and pattern and target must have as many
/// segments.
pub fn tuf_path(pattern: &str, target: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').collect();
    let t: Vec<&str> = target.split('/').collect();
    p.len() == t.len()
        && p.iter()
            .zip(&t)
            .all(|(p, t)| fnmatch(p.as_bytes(), t.as_bytes()))
}

/// One token of a TUF path-pattern segment.
enum Token<'a> {
    Star,
    Any,
    Lit(u8),
    /// `[seq]` or `[!seq]`.
    Set {
        negate: bool,
        set: &'a [u8],
    },
}

impl Token<'_> {
    fn matches(&self, c: u8) -> bool {
        match self {
            Token::Star | Token::Any => true,
            Token::Lit(l) => *l == c,
            Token::Set { negate, set } => {
                let mut hit = false;
                let mut i = 0;
                while i < set.len() {
                    if i + 2 < set.len() && set[i + 1] == b'-' {
                        hit |= set[i] <= c && c <= set[i + 2];
                        i += 3;
                    } else {
                        hit |= set[i] == c;
                        i += 1;
                    }
                }
                hit != *negate
            }
        }
    }
}

fn tokens(p: &[u8]) -> Vec<Token<'_>> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => out.push(Token::Star),
            b'?' => out.push(Token::Any),
            b'[' => {
                if let Some(close) = p[i..]
                    .iter()
                    .skip(2)
                    .position(|&c| c == b']')
                    .map(|j| i + j + 2)
                {
                    let (negate, set) = match p[i + 1] {
                        b'!' => (true, &p[i + 2..close]),
                        _ => (false, &p[i + 1..close]),
                    };
                    out.push(Token::Set { negate, set });
                    i = close;
                } else {
                    out.push(Token::Lit(b'['));
                }
            }
            c => out.push(Token::Lit(c)),
        }
        i += 1;
    }
    out
}

/// fnmatch for one segment: `*`, `?`, `[seq]`, `[!seq]`.
fn fnmatch(p: &[u8], t: &[u8]) -> bool {
    wildmatch(
        &tokens(p),
        t,
        |tok| matches!(tok, Token::Star),
        |tok, c| tok.matches(*c),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, t: &str) -> bool {
        let (p, t): (Vec<char>, Vec<char>) = (p.chars().collect(), t.chars().collect());
        wildmatch(&p, &t, |c| *c == '*', |p, t| *p == '?' || p == t)
    }

    #[test]
    fn stars_and_single_elements() {
        for (p, t, want) in [
            ("", "", true),
            ("*", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("*c", "abcbc", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("**a", "bba", true),
            ("*ab", "aab", true),
            ("exact", "exactly", false),
        ] {
            assert_eq!(m(p, t), want, "{p} vs {t}");
        }
    }

    /// Regression: `*a*a*a*a*a*a*a*b` against a long run of `a`s took
    /// exponential time in the recursive matchers this replaces.
    #[test]
    fn pathological_patterns_are_linear() {
        let text = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*a*a*a*a*a*a*a*b", &text));
        assert!(m("*a*a*a*a*a*a*a*a*a*a*a*a*", &text));
    }
}
